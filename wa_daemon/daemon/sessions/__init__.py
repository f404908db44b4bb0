"""The sessions layer: many WhatsApp Web sessions and their state machines.

``states`` is the table of allowed transitions and which event takes which
edge; ``machine`` makes a session's decisions without I/O (``events``: the
events in, the effects out); ``session`` does a session's I/O (launching,
waiting on the browser, applying effects); ``manager`` owns every session, the
launch queue and the status cache, and is the only way in for the layers
above; ``options`` resolves a session's options against the configuration;
``registry`` persists sessions; ``hub`` fans transitions out to watchers.
"""
