from nakhon.cli import main

raise SystemExit(main())
