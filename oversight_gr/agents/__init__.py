"""Old name of :mod:`oversight_gr.rl`, kept so that existing imports keep working.

``import oversight_gr.agents.trainer`` (and every other module that moved into
``oversight_gr.rl``: ``oversight_gr.sweep``, ``plots``, ``sweep_commands``, ``precision``) gives
the module of the new name, the same object, with a ``DeprecationWarning``.
"""
