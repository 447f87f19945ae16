"""Learners: turn episodes into training signal and publish new policy versions.

The learner protocol and the online loop arrive with the learning issue; this package
exists so the layout matches the design.
"""

from __future__ import annotations

__all__: list[str] = []
