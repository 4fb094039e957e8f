"""Errors that are the user's to fix (bad config, missing data): reported without a traceback."""


class UserError(ValueError):
  """A problem with the input or configuration; the message says what to change."""
