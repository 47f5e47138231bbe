"""The remote-sensing commands (``domainfm chips``)."""
