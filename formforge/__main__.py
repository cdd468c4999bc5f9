from formforge.cli import main

raise SystemExit(main())
