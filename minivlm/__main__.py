from minivlm.cli import main

raise SystemExit(main())
