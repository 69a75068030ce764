from recommender.cli import main

raise SystemExit(main())
