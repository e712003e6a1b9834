"""The laptop's dataset side: pull, mirror status and archive, git + DVC, validate, materialize, diffs and pages."""
