"""``ModelConfig``: the BoxCaseg network (paper Sec. 3.2-3.3) with the paper's defaults.

Paper values: HRNetV2-W48 backbone (ImageNet-pretrained), three identical heads (weak, salient,
transferred), alpha = 0.7 in Eq. 3. Not stated in the paper and chosen here: the heads' hidden
width (256; the authors' code uses the full 720 concatenated channels) and the width of the
weight-transfer MLP (256).
"""

from __future__ import annotations

from dataclasses import dataclass

from boxcaseg.errors import ConfigError

HEAD_NAMES = ("weak", "salient", "transferred")


@dataclass
class ModelConfig:
    backbone: str = "hrnet_w48"  # any timm model with features_only support
    pretrained: str = "auto"  # "auto" | "none" | "timm" | path to a state-dict file
    heads: tuple[str, ...] = HEAD_NAMES  # ablations: any subset that includes "weak"
    alpha: float = 0.7  # Eq. 3: weight of the salient head (1 - alpha: transferred head)
    head_channels: int = 256  # hidden width of each head
    # timm feature levels to concatenate; None = the backbone's default: all levels, except
    # HRNet where None means HRNetV2's four branches (strides 4-32, not the stride-2 stem)
    out_indices: tuple[int, ...] | None = None
    transfer_hidden: int = 256  # hidden width of the weight-transfer MLPs

    def validate(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ConfigError("model.backbone must be a timm model name, e.g. 'hrnet_w48'")
        if not isinstance(self.pretrained, str) or not self.pretrained:
            raise ConfigError("model.pretrained must be 'auto', 'none', 'timm' or a file path")
        heads = tuple(self.heads)
        unknown = [h for h in heads if h not in HEAD_NAMES]
        if unknown:
            raise ConfigError(f"model.heads: unknown head(s) {unknown}; valid: {list(HEAD_NAMES)}")
        if len(set(heads)) != len(heads):
            raise ConfigError(f"model.heads: duplicate entries in {list(heads)}")
        if "weak" not in heads:
            # the weak head carries the MIL loss on box images (and feeds the transferred head)
            raise ConfigError(f"model.heads must include 'weak', got {list(heads)}")
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ConfigError(f"model.alpha must be in [0, 1], got {self.alpha}")
        if self.head_channels < 1:
            raise ConfigError(f"model.head_channels must be >= 1, got {self.head_channels}")
        if self.transfer_hidden < 1:
            raise ConfigError(f"model.transfer_hidden must be >= 1, got {self.transfer_hidden}")
        if self.out_indices is not None:
            idx = tuple(self.out_indices)
            if not idx or any(i < 0 for i in idx) or len(set(idx)) != len(idx):
                raise ConfigError("model.out_indices must be None or distinct non-negative "
                                  f"feature levels, got {list(idx)}")
