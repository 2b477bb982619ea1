"""Camera focus monitor (``blur-detect cameras``): check IP cameras and streams, alert when one goes soft.

Modules, in the order data flows through them:

* :mod:`.config`: read and validate the YAML/CSV camera list; credentials from the environment, never shown.
* :mod:`.grab`: grab frames (HTTP snapshots, MJPEG, OpenCV streams and video files) within a hard deadline.
* :mod:`.monitor`: score the frames, judge each camera against its own baseline, run concurrent rounds.
* :mod:`.state`: the per-camera memory between checks, in a JSON file written atomically.
* :mod:`.report`, :mod:`.snapshots`: the report formats and event lines; the last frame with its blur map.
* :mod:`.cli`: the ``cameras`` subcommand, the only part that prints or writes files.
"""
