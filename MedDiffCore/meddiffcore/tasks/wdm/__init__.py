"""WDM: 3D wavelet diffusion (Friedrich et al. 2024) and its conditional variant cWDM.

Diffusion runs on the eight stacked Haar subbands of a volume at half resolution
(LLL scaled by 1/3), the network predicts x0, and each x0 estimate is clipped in
image space (inverse transform, clamp, forward transform).
"""
