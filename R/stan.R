# vb_stan(): vbayes's variational engine (fit_density(), R/density.R) behind
# the log density of a Stan program, as rstan exposes it.
#
# The stages, each a function of its own:
#   stan_require()       rstan present, or a sentence that says how to get it
#   stan_model_of()      a stanmodel from a stanmodel, a stanfit, a file or a
#                        program text; programs compiled once per session
#                        (cache keyed by the md5 of the program text)
#   stan_instance()      the zero-iteration stanfit that holds the data
#                        (rstan::sampling(chains = 0)), with Stan's own
#                        message when the data do not match the data block
#   stan_names()         Stan's flattened names: beta[1], M[2,1] (column-major)
#   stan_log_density()   u -> log p(u) with Jacobian, value and gradient in one
#                        call of rstan::log_prob()
#   stan_constrain()     a d x S matrix of unconstrained draws -> m x S
#                        constrained parameters and transformed parameters
# The fit is c("vbstan", "vbdensity", "vb_posterior"): everything of a
# vb_density() fit, plus the Stan model and data it came from, so that
# log_joint() (vb_diagnose()) and as_draws() work on the exact Stan density
# even after the fit was saved and loaded in a new session.

# Compiled programs of this session, by md5 of the program text.
stan_cache <- new.env(parent = emptyenv())

#' Variational Bayes for a Stan model
#'
#' Fits vbayes's Gaussian variational approximation to the posterior of any
#' Stan program, on Stan's unconstrained scale, with the log density and its
#' gradient computed by Stan ([rstan::log_prob()], Jacobians of the
#' constraining transforms included).  As [vb_density()] does, the fit starts
#' at the mode (quasi-Newton) and the Laplace approximation there, then
#' maximises the ELBO by stochastic gradients until it has stalled.
#'
#' `object` is compiled (when it is a program) once per R session: the next
#' call with the same program text reuses the compiled model.  From the
#' compiled model and `data` a stanfit with no draws is built
#' (`rstan::sampling(chains = 0)`); it supplies the log density, its gradient
#' and the transforms between the constrained and the unconstrained scale.
#'
#' **What the ELBO bounds.** The ELBO is a lower bound on log of the integral,
#' over the unconstrained parameters, of exp(target), where target is Stan's
#' `target()` (the accumulated log density, Jacobians included).  A sampling
#' statement `y ~ normal(mu, sigma)` adds the log density *without its
#' constant terms* (here -log(sqrt(2 pi)) per observation, and terms that do
#' not depend on parameters), so with `~` statements the ELBO bounds the log
#' evidence log p(y) only up to a constant that vb_stan() cannot know.
#' Written with `target += normal_lpdf(y | mu, sigma)` (and proper priors
#' also written with `target += ..._lpdf`), target is the full log p(y, theta)
#' and the ELBO is a bound on log p(y) that can be compared across models, as
#' [compare_models()] does.  The fit records which convention the program
#' uses (`stan$sampling_statements`) and print() says so.
#'
#' **Scales.** q is a Gaussian over the unconstrained parameters (kept in
#' `unconstrained`); `coef()`, `vcov()`, `summary()`, `confint()`, `draws()`
#' and `as_draws()` report the parameters and transformed parameters on the
#' constrained scale, with Stan's names (`beta[1]`, and matrices column-major,
#' `Sigma[1,1], Sigma[2,1], ...`), computed from draws of q.  Generated
#' quantities are not reported (they are random given the parameters).
#'
#' @param object A compiled Stan model (`stanmodel`, from [rstan::stan_model()]),
#'   a `stanfit` (its model is used; with `data` missing, its data too), or a
#'   Stan program: the path of a `.stan` file, or the program text.
#' @param data A named list with the variables of the program's data block
#'   (as for [rstan::sampling()]).
#' @param approx `"fullrank"` (dense covariance) or `"meanfield"` (diagonal),
#'   on the unconstrained scale.
#' @param init Starting values: `NULL` (the unconstrained origin, as Stan's
#'   `init = 0`; if the log density is not finite there, random points in
#'   (-2, 2) as Stan draws them), a named list of constrained values of every
#'   parameter (as for [rstan::sampling()]), or a numeric vector of
#'   unconstrained values.
#' @param init_method `"mode"` (start at the Laplace approximation at the mode
#'   found from `init`) or `"given"` (start at `init`).
#' @param control A [vb_control()] list (`sgvb_maxit`, `sgvb_tol`,
#'   `elbo_samples`, `quiet`, ...).
#' @param ... Unused.
#' @return An object of class `c("vbstan", "vbdensity", "vb_posterior")`: the
#'   fields of a [vb_density()] fit (`coefficients`, `vcov`, `elbo`, `mc_se`,
#'   `elbo_laplace`, `elbo_trace`, `converged`, `iterations`, `status`,
#'   `unconstrained`, ...), plus `stan`: the `model` (stanmodel) and `data`,
#'   `par_names` (constrained) and `unc_names` (unconstrained),
#'   `sampling_statements` (`TRUE` when the model block uses `~`), and
#'   `gradient_check`: Stan's gradient at the start against central
#'   differences of Stan's log density (`max_rel_error`), and `compile_time`
#'   (seconds; 0 when the model was compiled already).  `time` is the time of
#'   the fit without compilation.
#' @seealso [vb_density()] for a log density written in R; [rstan::vb()] for
#'   Stan's own ADVI.
#' @examples
#' # not run by R CMD check: compiling a Stan program takes about a minute
#' # (once per session; later calls with the same program reuse it)
#' \dontrun{
#' if (requireNamespace("rstan", quietly = TRUE)) {
#'   code <- "data { int N; vector[N] y; }
#'            parameters { real mu; real<lower=0> sigma; }
#'            model { mu ~ normal(0, 10); sigma ~ exponential(1); y ~ normal(mu, sigma); }"
#'   fit <- vb_stan(code, data = list(N = 8L, y = c(2.1, 0.3, 1.7, 3.2, 1.1, 0.4, 2.5, 1.9)),
#'                  control = vb_control(quiet = TRUE))
#'   summary(fit)
#' }
#' }
#' @export
vb_stan <- function(object, data, approx = c("fullrank", "meanfield"), init = NULL,
                    init_method = c("mode", "given"), control = vb_control(), ...) {
  cl <- match.call()
  what <- "vb_stan()"
  stan_require()
  approx <- match.arg(approx)
  init_method <- match.arg(init_method)
  control <- as_vb_control(control)
  quiet <- isTRUE(control$quiet)
  if (missing(data)) data <- NULL
  t_c <- proc.time()[["elapsed"]]
  src <- stan_model_of(object, data, quiet)
  t0 <- proc.time()[["elapsed"]]
  sf <- src$fit
  if (is.null(sf)) sf <- stan_instance(src$model, src$data)
  d <- rstan::get_num_upars(sf)
  if (d == 0L)
    stop("vb_stan(): the Stan program has no parameters (with these data its parameters block declares none, or only zero-size ones), so there is no posterior to approximate; Stan's algorithm = \"Fixed_param\" runs programs without parameters.",
         call. = FALSE)
  nm <- stan_names(sf)
  u0 <- stan_init(sf, init, nm$unconstrained)
  ld <- stan_log_density(sf)
  gc <- stan_gradient_check(ld, u0)
  if (gc$max_rel_error > 1e-4)
    warning(sprintf("vb_stan(): Stan's gradient disagrees with central differences of its log density at the start (largest relative error %.2g, for %s); the model may not be differentiable there.",
                    gc$max_rel_error, nm$unconstrained[gc$worst]), call. = FALSE)
  fit <- fit_density(ld, u0, approx = approx, init_method = init_method, control = control,
                     constrain = stan_constrain(sf, nm$constrained), par_names = nm$constrained,
                     what = what, call = cl, unc_names = nm$unconstrained)
  fit$stan <- list(model = src$model, data = src$data, model_name = src$model@model_name,
                   par_names = nm$constrained, unc_names = nm$unconstrained,
                   sampling_statements = stan_uses_tilde(src$model@model_code),
                   gradient_check = gc)
  fit$stan_fit <- sf
  # the time of the fit, compilation excluded (that is in stan$compile_time)
  fit$time <- proc.time()[["elapsed"]] - t0
  fit$stan$compile_time <- t0 - t_c
  class(fit) <- c("vbstan", class(fit))
  fit
}

# rstan, or a sentence that says how to install it.
stan_require <- function(available = requireNamespace("rstan", quietly = TRUE)) {
  if (!available)
    stop("vb_stan(): the package 'rstan' is needed to compile Stan programs and evaluate their log density; install it with install.packages(\"rstan\") (on Debian or Ubuntu: apt-get install r-cran-rstan) and call vb_stan() again.",
         call. = FALSE)
  invisible(TRUE)
}

# list(model = stanmodel, data = the data list, fit = a usable stanfit or NULL)
stan_model_of <- function(object, data, quiet) {
  if (!is.null(data) && !is.list(data))
    stop("vb_stan(): 'data' must be a named list of the variables in the program's data block.",
         call. = FALSE)
  if (length(data) && (is.null(names(data)) || any(!nzchar(names(data)))))
    stop("vb_stan(): 'data' must be a named list: every element needs the name of a variable of the data block.",
         call. = FALSE)
  if (inherits(object, "stanfit")) {
    sm <- object@stanmodel
    if (is.null(data)) {
      ok <- !inherits(tryCatch(rstan::get_num_upars(object), error = function(e) e), "error")
      if (!ok)
        stop("vb_stan(): this stanfit can no longer evaluate its log density (it was saved and loaded, or made without data); pass its model and 'data' instead.",
             call. = FALSE)
      return(list(model = sm, data = NULL, fit = object))
    }
    return(list(model = sm, data = data, fit = NULL))
  }
  if (inherits(object, "stanmodel")) return(list(model = object, data = data, fit = NULL))
  if (!is.character(object) || length(object) < 1L || anyNA(object))
    stop("vb_stan(): 'object' must be a compiled Stan model (rstan::stan_model()), a stanfit, the path of a .stan file or the text of a Stan program.",
         call. = FALSE)
  is_file <- length(object) == 1L && !grepl("[{};]", object)
  if (is_file) {
    if (!file.exists(object))
      stop(sprintf("vb_stan(): the Stan file '%s' does not exist (a program text must contain its blocks, such as 'parameters { ... }').",
                   object), call. = FALSE)
    code <- paste(readLines(object, warn = FALSE), collapse = "\n")
  } else code <- paste(object, collapse = "\n")
  list(model = stan_compile(code, if (is_file) object else NULL, quiet), data = data, fit = NULL)
}

# Compile a program (text `code`, from `file` when not NULL), once per session.
stan_compile <- function(code, file = NULL, quiet = FALSE) {
  key <- stan_hash(code)
  hit <- stan_cache[[key]]
  if (!is.null(hit)) return(hit)
  name <- if (is.null(file)) "vb_stan_model" else
    gsub("[^A-Za-z0-9_]", "_", sub("\\.stan$", "", basename(file)))
  # stanc: the parse, in a second; its messages go to the console, so catch them
  cap <- stan_captured(if (is.null(file)) rstan::stanc(model_code = code, model_name = name)
                       else rstan::stanc(file = file, model_name = name))
  ret <- cap$value
  if (inherits(ret, "error")) {
    txt <- sub("\\s+$", "", c(cap$text, conditionMessage(ret)))
    txt <- txt[nzchar(trimws(txt))]
    hint <- if (any(grepl("cannot be integer", txt)))
      " Stan has no discrete parameters: sum them out of the model (marginalise them in the model block) and recover them in generated quantities."
    else ""
    stop(sprintf("vb_stan(): the Stan program does not compile.%s Stan says:\n%s", hint,
                 paste(txt, collapse = "\n")), call. = FALSE)
  }
  if (!quiet) message("vb_stan(): compiling the Stan program (once per session; this takes about a minute) ...")
  boost <- stan_boost_lib()
  cap <- stan_captured(rstan::stan_model(stanc_ret = ret, boost_lib = boost, verbose = FALSE))
  sm <- cap$value
  if (inherits(sm, "error")) {
    txt <- c(cap$text, conditionMessage(sm))
    txt <- utils::tail(txt[nzchar(trimws(txt))], 30L)
    stop(sprintf("vb_stan(): the C++ compilation of the Stan program failed. The compiler says:\n%s",
                 paste(txt, collapse = "\n")), call. = FALSE)
  }
  assign(key, sm, envir = stan_cache)
  sm
}

# Evaluate a call into rstan that talks (console output, messages, warnings,
# and try() reports on stderr) and collect what it says, so that the caller
# decides what the user sees: list(value = the value or the error, text).
# Messages and warnings are caught here, innermost, before any handler of
# the caller's could take them.
stan_captured <- function(expr) {
  said <- character(0)
  value <- NULL
  err <- utils::capture.output(type = "message",
    out <- utils::capture.output(type = "output",
      value <- withCallingHandlers(tryCatch(expr, error = function(e) e),
        message = function(m) {
          said <<- c(said, sub("\n$", "", conditionMessage(m)))
          invokeRestart("muffleMessage")
        },
        warning = function(w) {
          said <<- c(said, conditionMessage(w))
          invokeRestart("muffleWarning")
        })))
  list(value = value, text = c(out, err, unlist(strsplit(said, "\n", fixed = TRUE))))
}

stan_hash <- function(code) {
  f <- tempfile(fileext = ".stan")
  on.exit(unlink(f))
  writeLines(code, f, useBytes = TRUE)
  unname(tools::md5sum(f))
}

# The Boost headers for rstan: NULL when rstan finds them itself (package BH
# with its headers); else a directory holding a link to the system's Boost
# (Debian's r-cran-bh is an empty package that pulls in libboost-dev).
stan_boost_lib <- function() {
  bl <- tryCatch(rstan::rstan_options("boost_lib"), error = function(e) "")
  if (length(bl) == 1L && !is.na(bl) && file.exists(file.path(bl, "boost", "version.hpp")))
    return(NULL)
  for (inc in c("/usr/include", "/usr/local/include", "/opt/homebrew/include")) {
    if (!file.exists(file.path(inc, "boost", "version.hpp"))) next
    dir <- file.path(tempdir(), "vbayes-boost")
    link <- file.path(dir, "boost")
    if (!file.exists(link)) {
      dir.create(dir, showWarnings = FALSE)
      if (!isTRUE(suppressWarnings(file.symlink(file.path(inc, "boost"), link)))) next
    }
    return(dir)
  }
  stop("vb_stan(): rstan cannot find the Boost C++ headers that Stan programs are compiled with; install the R package BH (install.packages(\"BH\")) or your system's Boost headers (Debian or Ubuntu: apt-get install libboost-dev).",
       call. = FALSE)
}

# The stanfit without draws that evaluates the log density with these data.
stan_instance <- function(sm, data) {
  if (is.null(data)) data <- list()
  data <- as.list(data)
  cap <- stan_captured(rstan::sampling(sm, data = data, chains = 0L))
  sf <- cap$value
  ok <- !inherits(sf, "error") &&
    !inherits(tryCatch(rstan::get_num_upars(sf), error = function(e) e), "error")
  if (!ok) {
    txt <- trimws(c(cap$text, if (inherits(sf, "error")) conditionMessage(sf)))
    txt <- txt[nzchar(txt) & !grepl("sampling not done", txt)]
    txt <- sub("^Error[^:]*: *", "", txt)
    txt <- sub("^Exception: *", "", txt)
    txt <- sub(" *\\(in '[^']*' at line [0-9]+\\)$", "", txt)
    if (!length(txt)) txt <- "(Stan gave no reason)"
    stop(sprintf("vb_stan(): 'data' do not match the data block of the Stan program: %s. Supply every variable that the data block declares, with its declared type, size and bounds.",
                 paste(unique(txt), collapse = "; ")), call. = FALSE)
  }
  sf
}

# Stan's flattened names: "beta.2" -> "beta[2]", "M.1.2" -> "M[1,2]"
# (column-major, as Stan orders them).  `constrained`: parameters and
# transformed parameters, in the order constrain_pars() returns them.
stan_names <- function(sf) {
  inst <- sf@.MISC[["stan_fit_instance"]]
  br <- function(x) {
    i <- grepl(".", x, fixed = TRUE)
    x[i] <- sub("^([^.]+)\\.(.*)$", "\\1[\\2]", x[i])
    x[i] <- vapply(x[i], function(s) gsub(".", ",", s, fixed = TRUE), "")
    unname(x)
  }
  list(unconstrained = br(inst$unconstrained_param_names(FALSE, FALSE)),
       constrained = br(inst$constrained_param_names(TRUE, FALSE)))
}

# The unconstrained starting point.
stan_init <- function(sf, init, unc) {
  d <- length(unc)
  if (is.null(init)) {
    ld <- function(u) tryCatch(rstan::log_prob(sf, u, adjust_transform = TRUE, gradient = FALSE),
                               error = function(e) -Inf)
    u <- numeric(d)
    if (is.finite(ld(u))) return(stats::setNames(u, unc))
    for (i in seq_len(100L)) {
      u <- stats::runif(d, -2, 2)
      if (is.finite(ld(u))) return(stats::setNames(u, unc))
    }
    stop("vb_stan(): the log density is not finite at the unconstrained origin nor at 100 random points in (-2, 2); give 'init' (a named list of parameter values in the support).",
         call. = FALSE)
  }
  if (is.list(init)) {
    if (length(init) && (is.null(names(init)) || any(!nzchar(names(init)))))
      stop("vb_stan(): 'init' must be a named list: one element per parameter, named as in the parameters block.",
           call. = FALSE)
    # zero-size parameters need no value
    for (p in names(sf@par_dims))
      if (is.null(init[[p]]) && length(sf@par_dims[[p]]) && prod(sf@par_dims[[p]]) == 0)
        init[[p]] <- array(0, dim = sf@par_dims[[p]])
    u <- tryCatch(rstan::unconstrain_pars(sf, init), error = function(e) e)
    if (inherits(u, "error"))
      stop(sprintf("vb_stan(): 'init' could not be mapped to the unconstrained scale: %s. Give a named list with a value of the declared size inside the bounds for every parameter.",
                   sub(" *\\(in '[^']*' at line [0-9]+\\)\\s*$", "", sub("^Exception: *", "", conditionMessage(u)))),
           call. = FALSE)
    return(stats::setNames(as.double(u), unc))
  }
  if (!is.numeric(init) || length(init) != d || any(!is.finite(init)))
    stop(sprintf("vb_stan(): 'init' must be NULL, a named list of parameter values, or %d finite unconstrained values (%s).",
                 d, paste(unc, collapse = ", ")), call. = FALSE)
  stats::setNames(as.double(init), unc)
}

# u -> Stan's target() with the Jacobian, with attribute "gradient" when grad.
# An error thrown by Stan (a parameter outside a distribution's support, a
# failed check) is passed on: fit_density() counts it as a rejected draw.
stan_log_density <- function(sf) {
  force(sf)
  function(u, grad = TRUE) {
    v <- rstan::log_prob(sf, u, adjust_transform = TRUE, gradient = grad)
    if (grad && !is.finite(v)) v <- as.double(v)
    v
  }
}

# Stan's gradient at u against central differences of Stan's value.
stan_gradient_check <- function(ld, u) {
  g <- attr(ld(u, TRUE), "gradient")
  num <- vapply(seq_along(u), function(i) {
    h <- 1e-5 * max(1, abs(u[i]))
    e <- replace(numeric(length(u)), i, h)
    (as.double(ld(u + e, FALSE)) - as.double(ld(u - e, FALSE))) / (2 * h)
  }, 0)
  err <- abs(g - num) / pmax(1, abs(g))
  if (any(!is.finite(err))) err[!is.finite(err)] <- Inf
  list(at = u, gradient = as.double(g), numeric = num, max_rel_error = max(err),
       worst = which.max(err))
}

# d x S unconstrained draws -> m x S parameters and transformed parameters.
stan_constrain <- function(sf, par_names) {
  m <- length(par_names)
  function(U) {
    U <- as.matrix(U)
    X <- vapply(seq_len(ncol(U)), function(s)
      as.double(unlist(rstan::constrain_pars(sf, U[, s]), use.names = FALSE))[seq_len(m)],
      numeric(m))
    X <- matrix(X, m, ncol(U))
    rownames(X) <- par_names
    X
  }
}

# Does the model block use sampling statements (which drop constants)?
stan_uses_tilde <- function(code) {
  code <- paste(code, collapse = "\n")
  code <- gsub("/\\*.*?\\*/", " ", code, perl = TRUE)
  code <- gsub("(//|#)[^\n]*", " ", code)
  grepl("~", code, fixed = TRUE)
}

# The stanfit of a fit, rebuilt from its model and data when the one it holds
# can no longer evaluate (the fit was saved and loaded in a new session).
stan_fit_of <- function(fit) {
  sf <- fit$stan_fit
  alive <- !is.null(sf) &&
    !inherits(tryCatch(rstan::get_num_upars(sf), error = function(e) e), "error")
  if (alive) return(sf)
  if (is.null(fit$stan$data) && is.null(fit$stan$model))
    stop("vb_stan(): this fit holds no Stan model to evaluate its log density with.", call. = FALSE)
  stan_instance(fit$stan$model, fit$stan$data)
}

# ---- vb_posterior interface --------------------------------------------------

# vb_diagnose(): the exact Stan log density (Jacobian included) at draws of
# the unconstrained parameters; a draw where Stan throws counts as -Inf.
#' @export
log_joint.vbstan <- function(fit, theta) {
  stan_require()
  sf <- stan_fit_of(fit)
  theta <- as.matrix(theta)
  vapply(seq_len(ncol(theta)), function(s)
    tryCatch(as.double(rstan::log_prob(sf, theta[, s], adjust_transform = TRUE, gradient = FALSE)),
             error = function(e) -Inf), 0)
}

#' @rdname draws
#' @export
draws.vbstan <- function(object, n = 1000, ...) {
  stan_require()
  n <- check_count(n, "n")
  U <- q_sample(object, n)[["theta"]]
  t(stan_constrain(stan_fit_of(object), object$stan$par_names)(U))
}

#' @export
print.vbstan <- function(x, digits = max(3L, getOption("digits") - 3L), ...) {
  cat(sprintf("Variational Bayes fit of the Stan model '%s' (%s Gaussian q on the unconstrained scale)\n",
              x$stan$model_name, x$approx))
  if (!is.null(x$call)) cat("Call: ", paste(deparse(x$call), collapse = "\n"), "\n", sep = "")
  cat("\n")
  print(cbind(mean = x$coefficients, sd = sqrt(diag(x$vcov))), digits = digits)
  cat(sprintf("\nELBO %.3f (Monte Carlo se %.2g)\n", x$elbo, x$mc_se))
  cat(stan_constant_note(x), "\n", sep = "")
  cat(sprintf("%s in %d steps, %.3g s\n", if (isTRUE(x$converged)) "Converged" else "NOT converged",
              as.integer(x$iterations), x$time))
  invisible(x)
}

stan_constant_note <- function(x) {
  if (isTRUE(x$stan$sampling_statements))
    "(a lower bound on log of the integral of exp(target()); the program uses '~' statements, which drop constant terms, so this is the log evidence only up to a constant)"
  else
    "(a lower bound on log of the integral of exp(target()): the log evidence when target() is the full log p(y, theta))"
}

#' @export
summary.vbstan <- function(object, level = 0.95, ...) {
  s <- NextMethod()
  s$stan_note <- stan_constant_note(object)
  s$model_name <- object$stan$model_name
  class(s) <- c("summary.vbstan", class(s))
  s
}

#' @export
print.summary.vbstan <- function(x, ...) {
  cat(sprintf("Stan model '%s'\n", x$model_name))
  NextMethod()
  cat(x$stan_note, "\n", sep = "")
  invisible(x)
}

#' Draws of a vb_stan() fit as a posterior draws object
#'
#' `n` draws from q on the constrained scale, one variable per parameter and
#' transformed parameter (Stan's names), plus `log_p__` (Stan's log density
#' at the draw, Jacobian included) and `log_g__` (log q at the draw, on the
#' unconstrained scale), as [rstan::vb()] reports them; so
#' `posterior::summarise_draws()` and `loo::psis(log_p__ - log_g__)` work.
#' @param x A fit from [vb_stan()].
#' @param n Number of draws.
#' @param ... Unused.
#' @return A `draws_matrix` (package posterior).
#' @examples
#' # not run by R CMD check: compiling a Stan program takes about a minute
#' \dontrun{
#' if (requireNamespace("rstan", quietly = TRUE) && requireNamespace("posterior", quietly = TRUE)) {
#'   fit <- vb_stan("parameters { real<lower=0> s; } model { s ~ gamma(3, 2); }",
#'                  control = vb_control(quiet = TRUE))
#'   posterior::summarise_draws(posterior::as_draws(fit))
#' }
#' }
#' @rawNamespace S3method(posterior::as_draws, vbstan)
#' @export
as_draws.vbstan <- function(x, n = 4000, ...) {
  if (!requireNamespace("posterior", quietly = TRUE))
    stop("as_draws(): the package 'posterior' is needed; install it with install.packages(\"posterior\").",
         call. = FALSE)
  stan_require()
  n <- check_count(n, "n")
  qs <- q_sample(x, n)
  sf <- stan_fit_of(x)
  X <- stan_constrain(sf, x$stan$par_names)(qs$theta)
  lp <- log_joint(x, qs$theta)
  out <- cbind(t(X), log_p__ = lp, log_g__ = qs$logq)
  colnames(out) <- c(x$stan$par_names, "log_p__", "log_g__")
  posterior::as_draws_matrix(out)
}
