"""What a malicious checkpoint or dataset file does: unpickling it runs code (here: writes a marker)."""


class Payload:
    """Unpickling this writes ``marker``; a safe reader must refuse it without running it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))
