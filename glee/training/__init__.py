"""What training optimises and feeds: the losses (Sec. III-D, III-E) and the augmentation
of aligned faces (Sec. IV-B). Pure PyTorch; the Ray Train loops call it."""
