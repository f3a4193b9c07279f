"""Campaigns: one announcement to every number of a CSV file, durably.

Modules: :mod:`.template` (the ``{name}`` text), :mod:`.contacts` (loading and checking the
CSV), :mod:`.window` (calling hours), :mod:`.config` (the options stored with a campaign),
:mod:`.retry` (what follows an attempt), :mod:`.lease` (one runner per campaign),
:mod:`.runner` (the run: recovery, pacing, attempts, pause and cancel), :mod:`.progress` (what
the progress line says, and its rendering), :mod:`.export` (results as CSV), :mod:`.cli_args`
(the ``hamsa-bridge campaign …`` parsers) and :mod:`.commands` (what they run).
"""
