"""Tasks: ctca, ctp, recon, wdm, sr, and the minimal ``uncond`` task that exercises the engine."""
