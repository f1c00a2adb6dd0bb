"""Cascaded super-resolution DDPM (2D): a base generator and 2x super-resolution stages.

Each stage is a UNet with a Swin transformer block at the bottleneck; the
super-resolution stages see the bilinearly upsampled lower-resolution image
concatenated to their noisy input, optionally with noise-conditioning augmentation.
"""
