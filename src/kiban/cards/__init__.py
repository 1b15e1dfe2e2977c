"""My Number card lifecycle (カード管理) and the software card chip (SPEC K4)."""
