"""``segearth serve``: a local web page in front of one loaded ``Predictor``.

``app``: the HTTP API and the page (``page.html``, self-contained: nothing is fetched from elsewhere); ``jobs``: the
queue that runs one prediction at a time and keeps each job's files; ``render``: the scene preview and the
coloured answer layers the page stacks over it; ``examples``: example scenes found in local datasets.
"""
