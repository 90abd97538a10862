"""SCL itself: networks, memories, losses, pseudo labels, k-means, augmentation (docs/method.md)."""
