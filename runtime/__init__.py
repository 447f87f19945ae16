"""searchlearn runtime: everything an episode needs to run, one subpackage per part of
the roadmap (Zeng et al. 2024):

- :mod:`runtime.core`: types, errors, the component registry (the base layer);
- :mod:`runtime.policy`: part 1, the Policy protocol and its backends;
- :mod:`runtime.rewards`: part 2, verifiers, composition and shaping;
- :mod:`runtime.search`: part 3's API, the episode context and the Strategy protocol
  (the strategies themselves are the top-level package ``strategies``);
- :mod:`runtime.scheduling`: the scheduler, the episode store, task sources;
- :mod:`runtime.tiny`: the bundled tiny domain (tasks, rule verifier, policy files);
- :mod:`runtime.app`: the composition root (run config, build, CLI, plot).

Part 4, learning, is the top-level package ``learners``. The names below are imported
on first use, so ``import runtime`` loads neither openai nor torch.
"""

from __future__ import annotations

from runtime.core.lazy import stub_exports as _stub_exports

__getattr__, __dir__, __all__ = _stub_exports(__name__, __file__)
