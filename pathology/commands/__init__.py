"""The pathology commands (``domainfm tile``) and the slide hooks of the core commands (``extract``)."""
