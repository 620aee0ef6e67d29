"""Promptable (interactive) segmentation: points, boxes, scribbles and lassos placed in physical space.

`open_session` opens an nnInteractive model folder (the `nninteractive` package) or a SAM 2 checkpoint (the
`sam2` package); both packages are imported only then. `prompts` maps physical prompts to voxels;
`PromptedImage` keeps a session in step with a prompt history.
"""

from .families import family_of, open_session, resolve
from .session import KINDS, InteractionResult, Prompt, PromptedImage, PromptSession, prompts_from_json, read_prompts

__all__ = ["KINDS", "InteractionResult", "Prompt", "PromptSession", "PromptedImage", "family_of", "open_session",
           "prompts_from_json", "read_prompts", "resolve"]
