"""The VQGAN family: diffusers `VQModel` round trips, VQGAN+CLIP optimisation and aMUSEd.

- `engine.VQGANEngine` (`vqgan`): image → codes → image through a VQGAN.
- `engine.VQGANCLIPEngine` (`vqgan_clip`): the slow, "artistic" VQGAN+CLIP optimisation
  (`optimise.optimise`, callable in-process).
- `amused.AmusedEngine` (`amused`): aMUSEd text-to-image (VQGAN tokens + masked transformer).
- `convert`: taming-transformers VQGAN checkpoints → diffusers VQModel folders
  (`genart convert taming`).

Importing this package loads neither torch nor diffusers.
"""
