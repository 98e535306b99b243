"""Pure decisions: who a device is (authenticate) and what it may touch (topics). No I/O, no clock."""
