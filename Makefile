# vbayes — build, test, check, demo, bench.  Every target that needs
# packages calls `deps` first, so each is one command on a fresh machine.
R       ?= R
RSCRIPT ?= Rscript
LIB     := $(CURDIR)/.lib
VERSION := $(shell sed -n 's/^Version: *//p' DESCRIPTION)
TARBALL := vbayes_$(VERSION).tar.gz
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# R packages needed to build, document, test, check and build vignettes,
# taken prebuilt from Debian; CRAN is the fallback when apt is unavailable.
DEB_PKGS  := r-cran-roxygen2 r-cran-knitr r-cran-rmarkdown r-cran-generics \
             r-cran-testthat pandoc qpdf
R_NEEDED  := c("roxygen2","knitr","rmarkdown","generics","testthat","MASS","boot")

.PHONY: deps install document test check demo bench bench-deps clean

deps:
	@$(RSCRIPT) -e 'ok <- vapply($(R_NEEDED), requireNamespace, TRUE, quietly = TRUE); q(status = !all(ok) || !nzchar(Sys.which("pandoc")))' 2>/dev/null || { \
	  echo "make deps: installing $(DEB_PKGS)"; \
	  ( $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEB_PKGS) ) >/dev/null 2>&1 || \
	  $(RSCRIPT) -e 'p <- $(R_NEEDED); p <- p[!vapply(p, requireNamespace, TRUE, quietly = TRUE)]; if (length(p)) install.packages(p)'; \
	  $(RSCRIPT) -e 'ok <- vapply($(R_NEEDED), requireNamespace, TRUE, quietly = TRUE); if (!all(ok)) stop("missing: ", paste(names(ok)[!ok], collapse = ", "))'; }

document: deps
	$(RSCRIPT) -e 'roxygen2::roxygenise()'

install: deps
	@mkdir -p $(LIB)
	$(R) CMD INSTALL --no-multiarch --preclean -l $(LIB) . >$(LIB)/install.log 2>&1 || { cat $(LIB)/install.log; exit 1; }
	@rm -f src/*.o src/*.so

test: install
	R_LIBS=$(LIB) NOT_CRAN=true $(RSCRIPT) tools/run-tests.R

# --as-cran looks up orphaned packages in CRAN's web area, which this
# machine's CRAN mirror does not serve: point it at an empty local table.
CRAN_WEB := $(CURDIR)/.lib/cran-web
check: deps
	rm -rf $(TARBALL) vbayes.Rcheck
	@mkdir -p $(CRAN_WEB)/web/packages
	@$(RSCRIPT) -e 'saveRDS(data.frame(Package = character(), Maintainer = character()), "$(CRAN_WEB)/web/packages/packages.rds")'
	$(R) CMD build .
	R_CRAN_WEB=file://$(CRAN_WEB) _R_CHECK_FORCE_SUGGESTS_=false _R_CHECK_CRAN_INCOMING_=false \
	  _R_CHECK_CRAN_INCOMING_REMOTE_=false $(R) CMD check --as-cran --no-manual $(TARBALL); \
	  status=$$?; grep -E "^Status:" vbayes.Rcheck/00check.log; \
	  if [ $$status -ne 0 ] || grep -qE "^Status:.*(ERROR|WARNING)" vbayes.Rcheck/00check.log; then \
	    grep -B2 -A20 -E "\.\.\. (ERROR|WARNING)" vbayes.Rcheck/00check.log; exit 1; fi

demo: install
	VBAYES_DEMO_DIR=$(CURDIR)/demo-output R_LIBS=$(LIB) $(RSCRIPT) -e 'demo("spikes", package = "vbayes", ask = FALSE, echo = TRUE)'

# Peers for the benchmarks only (never needed by the tests): rstan from Debian,
# BH (Boost headers for stan_model) and KFAS from CRAN.
bench-deps:
	@$(RSCRIPT) -e 'q(status = !requireNamespace("rstan", quietly = TRUE))' 2>/dev/null || \
	  ( $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq r-cran-rstan ) >/dev/null 2>&1 || \
	  echo "make bench-deps: rstan not installed; the Stan peers will be skipped"
	@$(RSCRIPT) -e 'p <- c("BH", "KFAS"); p <- p[!vapply(p, requireNamespace, TRUE, quietly = TRUE)]; if (length(p)) install.packages(p, quiet = TRUE)'

bench: install bench-deps
	R_LIBS=$(LIB) $(RSCRIPT) bench/run.R

clean:
	rm -rf $(LIB) $(TARBALL) vbayes.Rcheck src/*.o src/*.so demo-output
