"""Review pages: one renderer (`pages`) for the static report (`site`, `qarina report`) and
the live pages under `/ui` of the service; pictures made on the server (`thumbs`), blurred
until a reviewer asks for them."""
