"""The analysis stages run window by window in bounded memory, each equal row for row to its
whole-trace stage: events (read and normalize), intervals, charged work and disruptions,
requests. State that crosses a window edge is carried; docs/windows.md says what and why."""
