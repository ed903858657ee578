"""Read the guidance branch from diffusers' ``cache_context`` so controls know which pass is running.

Pipelines that run the conditional and unconditional passes separately (Wan, and most DiT pipelines since
diffusers 0.35) wrap each call in ``model.cache_context("cond")`` / ``("uncond")``. That context reaches only
*stateful diffusers hooks*, not attention processors; :class:`BranchHook` is such a hook and copies the context
name into ``controller.branch`` before every forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

if TYPE_CHECKING:
    from .controller import AttentionController

HOOK_NAME = "attnctl_branch"


class _NoState(BaseState):
    def reset(self) -> None:
        return None


class BranchHook(ModelHook):
    """Sets ``controller.branch`` to the active cache-context name (left unchanged outside any context)."""

    _is_stateful = True  # diffusers only hands the cache context to stateful hooks' StateManagers

    def __init__(self, controller: AttentionController) -> None:
        super().__init__()
        self.controller = controller
        self.state_manager = StateManager(_NoState)

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        try:
            self.controller.branch = self.state_manager.context.name
        except ValueError:  # no cache_context around this call: the pipeline sets the branch itself, if at all
            pass
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


def install_branch_hook(model: torch.nn.Module, controller: AttentionController) -> Callable[[], None]:
    """Register a :class:`BranchHook` on ``model`` if it supports ``cache_context``; return its remover."""
    if not hasattr(model, "cache_context"):
        return lambda: None
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.register_hook(BranchHook(controller), HOOK_NAME)
    return lambda: registry.remove_hook(HOOK_NAME, recurse=False)
