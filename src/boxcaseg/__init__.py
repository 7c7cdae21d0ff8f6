"""boxcaseg: box-supervised class-agnostic segmentation (BoxCaseg, CVPR 2021).

Data flows one way: readers -> model -> labeler -> trainer -> evaluation.
"""

__version__ = "0.1.0"
