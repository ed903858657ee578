"""Read the guidance branch from diffusers' ``cache_context`` so controls know which pass is running.

Pipelines that run the conditional and unconditional passes separately (Wan, and most DiT pipelines since
diffusers 0.35) wrap each call in ``model.cache_context("cond")`` / ``("uncond")``. That context reaches only
*stateful diffusers hooks*, not attention processors; :class:`BranchHook` is such a hook and hands the context
name to its controller (a callback) before every forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

HOOK_NAME = "attnctl_branch"


class _NoState(BaseState):
    def reset(self) -> None:
        return None


class BranchHook(ModelHook):
    """Reports the active cache-context name to ``set_branch`` (nothing outside any context)."""

    _is_stateful = True  # diffusers only hands the cache context to stateful hooks' StateManagers

    def __init__(self, set_branch: Callable[[str], None]) -> None:
        super().__init__()
        self.set_branch = set_branch
        self.state_manager = StateManager(_NoState)

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        try:
            name = self.state_manager.context.name
        except ValueError:  # no cache_context around this call: the pipeline declares the branch, if at all
            return args, kwargs
        self.set_branch(name)
        return args, kwargs

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state_manager.reset()
        return module


def install_branch_hook(model: torch.nn.Module, set_branch: Callable[[str], None]) -> Callable[[], None]:
    """Register a :class:`BranchHook` on ``model`` if it supports ``cache_context``; return its remover."""
    if not hasattr(model, "cache_context"):
        return lambda: None
    registry = HookRegistry.check_if_exists_or_initialize(model)
    registry.register_hook(BranchHook(set_branch), HOOK_NAME)
    return lambda: registry.remove_hook(HOOK_NAME, recurse=False)
