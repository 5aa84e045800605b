from ossa_serving.cli import main

raise SystemExit(main())
