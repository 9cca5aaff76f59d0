"""The ``smoa`` command line. It calls the library; the library never imports it."""
