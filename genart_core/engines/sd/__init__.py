"""The Stable Diffusion family engine."""
