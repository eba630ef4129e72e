from poclip.cli import main

raise SystemExit(main())
