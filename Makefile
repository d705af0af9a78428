# vbayes — build, test, check, demo, bench.  Every target that needs
# packages calls `deps` first, so each is one command on a fresh machine.
R       ?= R
RSCRIPT ?= Rscript
LIB     := $(CURDIR)/.lib
LIB_SAN := $(CURDIR)/.lib-san
VERSION := $(shell sed -n 's/^Version: *//p' DESCRIPTION)
TARBALL := vbayes_$(VERSION).tar.gz
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# R packages needed to build, document, test, check and build vignettes,
# taken prebuilt from Debian; whatever is still missing afterwards (packages
# Debian does not carry, such as reformulas and KFAS) comes from CRAN through
# the repository R is configured with.
DEB_PKGS  := r-cran-roxygen2 r-cran-knitr r-cran-rmarkdown r-cran-generics \
             r-cran-testthat r-cran-lme4 r-cran-loo r-cran-posterior r-cran-rstantools \
             r-cran-bayesplot r-cran-broom r-cran-emmeans r-cran-future.apply \
             r-cran-progressr r-cran-dbi r-cran-rsqlite r-cran-rstan r-cran-bh r-cran-rstanarm \
             pandoc qpdf
R_NEEDED  := c("roxygen2","knitr","rmarkdown","generics","testthat","MASS","boot","lme4", \
               "loo","posterior","rstantools","bayesplot","broom","emmeans","future.apply", \
               "progressr","DBI","RSQLite","rstan","BH","reformulas","KFAS")
HAVE_DEPS := ok <- vapply($(R_NEEDED), requireNamespace, TRUE, quietly = TRUE)
# rstan compiles Stan programs against Boost: the headers of CRAN's BH, or the
# system's (Debian's r-cran-bh is an empty package that pulls in libboost-dev;
# vb_stan() points rstan at those).
HAVE_BOOST := ok <- any(file.exists(c(file.path(system.file("include", package = "BH"), "boost", "version.hpp"), \
                "/usr/include/boost/version.hpp", "/usr/local/include/boost/version.hpp")))

.PHONY: deps install document test check sanitize demo bench bench-deps clean

deps:
	@$(RSCRIPT) -e '$(HAVE_DEPS); q(status = !all(ok) || !nzchar(Sys.which("pandoc")))' 2>/dev/null || { \
	  echo "make deps: installing $(DEB_PKGS)"; mkdir -p $(LIB); \
	  ( $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(DEB_PKGS) ) >$(LIB)/apt.log 2>&1; \
	  $(RSCRIPT) -e '$(HAVE_DEPS); p <- names(ok)[!ok]; if (length(p)) { message("make deps: from CRAN: ", toString(p)); install.packages(p, quiet = TRUE) }' >$(LIB)/cran.log 2>&1; \
	  $(RSCRIPT) -e '$(HAVE_DEPS); if (!all(ok)) stop("make deps: missing ", toString(names(ok)[!ok]), " (see .lib/apt.log, .lib/cran.log)")'; }
	@$(RSCRIPT) -e '$(HAVE_BOOST); if (!ok) { message("make deps: rstan finds no Boost headers; BH from CRAN"); install.packages("BH", quiet = TRUE) }'

document: deps
	$(RSCRIPT) -e 'roxygen2::roxygenise()'

install: deps
	@mkdir -p $(LIB)
	$(R) CMD INSTALL --no-multiarch --preclean -l $(LIB) . >$(LIB)/install.log 2>&1 || { cat $(LIB)/install.log; exit 1; }
	@rm -f src/*.o src/*.so

test: install  # make test TEST_FILTER=glmm runs tests/testthat/test-*glmm*.R only
	R_LIBS=$(LIB) NOT_CRAN=true $(RSCRIPT) tools/run-tests.R

# The test suite (fuzz suite included) against a build instrumented with
# AddressSanitizer and UBSan (tools/Makevars.sanitize) in its own library;
# fails on any sanitizer report (tools/sanitize.sh).
sanitize: deps
	@rm -rf $(LIB_SAN) && mkdir -p $(LIB_SAN)
	R_MAKEVARS_USER=$(CURDIR)/tools/Makevars.sanitize $(R) CMD INSTALL --no-multiarch --preclean \
	  --no-test-load -l $(LIB_SAN) . >$(LIB_SAN)/install.log 2>&1 || { cat $(LIB_SAN)/install.log; exit 1; }
	@rm -f src/*.o src/*.so
	@grep -q -- "-fsanitize=address" $(LIB_SAN)/install.log || { \
	  cat $(LIB_SAN)/install.log; echo "make sanitize: the build was not instrumented"; exit 1; }
	RSCRIPT=$(RSCRIPT) bash tools/sanitize.sh $(LIB_SAN) $(LIB_SAN)/reports

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

# Peers for the benchmarks only (never needed by the tests): rstanarm and
# glmnet from Debian, vglmer and biglm from CRAN.
BENCH_DEB := r-cran-rstanarm r-cran-glmnet
BENCH_R   := c("rstanarm","glmnet","vglmer","biglm")
OPENBLAS_SYS := /usr/lib/$(shell dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)/openblas-pthread
bench-deps: deps
	@$(RSCRIPT) -e 'q(status = !all(vapply($(BENCH_R), requireNamespace, TRUE, quietly = TRUE)))' 2>/dev/null || { \
	  ( $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(BENCH_DEB) ) >/dev/null 2>&1; \
	  $(RSCRIPT) -e 'p <- $(BENCH_R); p <- p[!vapply(p, requireNamespace, TRUE, quietly = TRUE)]; if (length(p)) install.packages(p, quiet = TRUE)'; }
	@# OpenBLAS for bench/speed.R's child process, without a system change: the
	@# installed libopenblas0-pthread when present, else its Debian package
	@# unpacked into .lib/openblas (bench/speed.R points R_LD_LIBRARY_PATH there).
	@if [ -e $(OPENBLAS_SYS)/libblas.so.3 ] || [ -n "$$(find $(LIB)/openblas -name libblas.so.3 2>/dev/null)" ]; then :; else \
	  echo "make bench-deps: unpacking libopenblas0-pthread into .lib/openblas (no system change)"; \
	  mkdir -p $(LIB)/openblas && cd $(LIB)/openblas && \
	  { apt-get download libopenblas0-pthread >/dev/null 2>&1 || \
	    { $(SUDO) apt-get update -qq >/dev/null 2>&1 && apt-get download libopenblas0-pthread >/dev/null 2>&1; }; } && \
	  dpkg -x libopenblas0-pthread_*.deb . && rm -f libopenblas0-pthread_*.deb || \
	  echo "make bench-deps: OpenBLAS not available; bench/speed.R skips its OpenBLAS rows"; fi

bench: install bench-deps
	R_LIBS=$(LIB) $(RSCRIPT) bench/run.R

clean:
	rm -rf $(LIB) $(LIB_SAN) $(TARBALL) vbayes.Rcheck src/*.o src/*.so demo-output
