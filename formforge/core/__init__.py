"""The protocol-neutral core: the upload model, the service both fronts call, and the
interfaces it calls (store, locker, hooks). It imports neither tornado nor socketio, nor
any store, locker or front: whoever wires the app hands the implementations in."""
