"""The project's own micro models (issue 8), trained here on the procedural textures:
`vqgan` (the VQGAN's parts, losses and metrics) and `train_vqgan` (its training loop,
checkpoints and evaluation). torch and diffusers are needed to import them."""
