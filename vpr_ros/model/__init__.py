"""Network definitions (torch). Import only where torch is available."""
