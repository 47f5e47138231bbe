"""The vocabulary every core layer shares (step schedules, process-group helpers, the run log format); it
imports no other part of domainfm, so engine, methods, objectives and reports all build on it."""
