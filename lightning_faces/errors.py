"""The one exception type the package raises for a user's mistake."""


class FacesError(Exception):
    """A problem the user can fix: bad config, missing data, unreadable files.

    The CLI prints its message as one line and exits with status 2 instead of a traceback.
    """
