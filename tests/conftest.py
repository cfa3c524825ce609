"""Settings for every test: Hypothesis runs without its per-example deadline, so that a
property test's outcome depends on its examples only, never on how loaded the machine is
(a slow example on a busy CI machine is not a failure)."""

from hypothesis import settings

settings.register_profile("tether", deadline=None)
settings.load_profile("tether")
