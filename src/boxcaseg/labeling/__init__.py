"""The auto-labeler: proxy masks, merge and drop, baselines."""
