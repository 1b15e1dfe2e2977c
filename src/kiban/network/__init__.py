"""Identity network (住基ネット, SPEC K2): national and prefectural copies, provision, disclosure."""
