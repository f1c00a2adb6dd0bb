"""Image-quality and overlap metrics shared by every task's evaluation."""

from .image import dice, ms_ssim, psnr, ssim, ssim_by_orientation

__all__ = ["dice", "ms_ssim", "psnr", "ssim", "ssim_by_orientation"]
