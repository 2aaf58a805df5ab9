//! The shared per-client counters, each one atomic server-side step (a Lua script).
