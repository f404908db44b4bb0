"""The sessions layer: many WhatsApp Web sessions and their state machines.

``states`` is the table of allowed transitions and of which event takes which
edge; ``events`` holds the machine's inputs and outputs (events, effects, the
status ``View``); ``machine`` makes a session's decisions without I/O (events
in, effects out); ``session`` does a session's I/O (the runner task, the
browser, applying effects); ``options`` resolves a session's settings against
the configuration in one place; ``manager`` owns every session, the launch
queue and the status cache, and is the only way in for the layers above;
``registry`` persists sessions; ``hub`` fans transitions out to watchers.
"""
