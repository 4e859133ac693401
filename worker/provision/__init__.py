"""Getting a Mac from nothing to a working local provider: `doctor` and `install`."""
