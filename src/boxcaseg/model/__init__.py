"""The BoxCaseg network: timm backbone, three heads, weight transfer."""
