from perftune.cli import main

raise SystemExit(main())
