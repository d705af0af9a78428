# The Bayesian R ecosystem on a variational posterior: loo (log_lik, loo,
# waic, loo_compare), posterior (as_draws_*), rstantools (posterior_predict,
# posterior_epred, posterior_linpred, bayes_R2), bayesplot (pp_check) and
# emmeans (recover_data, emm_basis).  Those packages are in Suggests: each
# method is registered for the owning package's generic (delayed
# registration, `@exportS3Method pkg::generic`), so it is found as soon as
# that package is loaded.  The names DESIGN lists as vbayes API (log_lik,
# loo, as_draws) are also vbayes generics, with the same methods, so they
# work without the other package attached; their default methods hand any
# other object to the owning package's generic.
#
# Everything is built on draws from q: q_sample(fit, S) gives theta (d x S)
# and log q, log_joint(fit, theta) gives log p(y, theta), and the internal
# generic loglik_pointwise(fit, theta) gives the n x S matrix of
# log p(y_i | theta_s).  A posterior class gets log_lik(), loo() and waic()
# by providing the three.

# ---- pointwise log-likelihood ------------------------------------------------

loglik_pointwise <- function(fit, theta, newdata = NULL) UseMethod("loglik_pointwise")

#' @export
loglik_pointwise.default <- function(fit, theta, newdata = NULL) {
  why <- if (inherits(fit, "vbdensity"))
    "a vb_density() fit approximates the posterior of a log density and has no observations"
  else sprintf("fits of class '%s' have no pointwise log-likelihood method", class(fit)[1L])
  stop(sprintf("log_lik(): not available: %s. log_lik(), loo() and waic() need a fit with data, such as one from vb().",
               why), call. = FALSE)
}

# GLMs: log p(y_i | beta, tau) for each observation with positive weight and
# each column of theta (coefficients, then log tau for gaussian), on the same
# scale as the log joint of the C core: prior weights scale the gaussian
# precision and multiply the poisson log-likelihood; binomial y are
# successes out of `weights` trials.
#' @export
loglik_pointwise.vbfit <- function(fit, theta, newdata = NULL) {
  d <- eco_data(fit, newdata, "log_lik")
  p <- ncol(d$X)
  eta <- d$X %*% theta[seq_len(p), , drop = FALSE] + d$offset
  y <- d$y; w <- d$w
  switch(fit[["family"]]$family,
    gaussian = {
      tau <- exp(theta[p + 1L, ])
      0.5 * (log(w) - log(2 * pi)) + 0.5 * rep(log(tau), each = nrow(eta)) -
        0.5 * ((y - eta)^2 * w) * rep(tau, each = nrow(eta))
    },
    poisson = w * (y * eta - exp(eta) - lgamma(y + 1)),
    binomial = lchoose(w, y) + y * eta - w * (pmax(eta, 0) + log1p(exp(-abs(eta)))))
}

# The observations a data-bound method works on: design, offset, response
# and weights (binomial: trials), rows with zero weight dropped (they are not
# observations; nobs() does not count them either).  `newdata` must then
# carry the response.
eco_data <- function(fit, newdata, what) {
  if (is.null(newdata)) {
    if (is.null(fit[["y"]]))
      stop(sprintf("%s(): this fit was made with y = FALSE, so its response is gone; refit with y = TRUE.", what),
           call. = FALSE)
    d <- new_design(fit, NULL, what)
    y <- fit[["y"]]; w <- fit[["prior.weights"]]
  } else {
    if (!is.data.frame(newdata))
      stop(sprintf("%s(): 'newdata' must be a data frame.", what), call. = FALSE)
    tt <- fit[["terms"]]
    rv <- if (attr(tt, "response") == 1L) all.vars(tt[[2L]]) else character(0)
    miss <- setdiff(rv, names(newdata))
    if (length(miss))
      stop(sprintf("%s(): 'newdata' must hold the response; it lacks %s.", what,
                   paste(sQuote(miss, FALSE), collapse = ", ")), call. = FALSE)
    d <- new_design(fit, newdata, what)
    mf <- tryCatch(model.frame(fit[["terms"]], newdata, na.action = stats::na.pass,
                               xlev = fit[["xlevels"]]),
                   error = function(e) stop(sprintf("%s(): 'newdata' must hold the response and every variable of the model: %s",
                                                    what, conditionMessage(e)), call. = FALSE))
    yr <- model.response(mf, "any")
    if (is.null(yr)) stop(sprintf("%s(): 'newdata' must hold the response.", what), call. = FALSE)
    r <- family_response(yr, NULL, fit[["family"]], nrow(d$X))
    y <- r$y; w <- r$weights
  }
  keep <- w > 0
  if (!all(keep)) {
    d$X <- d$X[keep, , drop = FALSE]
    d$offset <- d$offset[keep]
  }
  list(X = d$X, offset = d$offset, y = y[keep], w = w[keep], keep = keep)
}

# ---- log_lik ---------------------------------------------------------------------

#' Pointwise log-likelihood under draws from the approximate posterior
#'
#' `log_lik(fit)` is the S x n matrix of log p(y_i | theta_s) for S draws
#' theta_s from q and each observation i (rows with zero prior weight are
#' not observations and are left out), the input [loo::loo()] and
#' [loo::waic()] expect.  The method is registered for the generic of
#' \pkg{rstantools} too, so `rstantools::log_lik(fit)` gives the same.
#'
#' The log-likelihood is the one the fit maximises: gaussian prior weights
#' scale the noise precision, poisson weights multiply the log-likelihood,
#' binomial responses are successes out of `weights` trials (with the
#' binomial coefficient).
#' @param object A fit from [vb()] or [vb_fit()].
#' @param newdata Optional data frame with the response and the predictors,
#'   for the log-likelihood of held-out data.
#' @param draws Number of draws from q.
#' @param ... Unused.
#' @return A `draws` x n matrix.
#' @seealso [loo.vb_posterior()].
#' @examples
#' fit <- vb(mpg ~ wt, data = mtcars)
#' dim(log_lik(fit, draws = 100))
#' @export
log_lik <- function(object, ...) UseMethod("log_lik")

#' @rdname log_lik
#' @export
log_lik.default <- function(object, ...) {
  if (!requireNamespace("rstantools", quietly = TRUE))
    stop(sprintf("log_lik(): there is no method for class '%s' in vbayes; install rstantools for other models.",
                 class(object)[1L]), call. = FALSE)
  eco_forward(rstantools::log_lik, object, ...)
}

#' @rdname log_lik
#' @export
#' @rawNamespace S3method(rstantools::log_lik, vb_posterior)
log_lik.vb_posterior <- function(object, newdata = NULL, draws = 4000, ...) {
  draws <- check_count(draws, "draws")
  th <- q_sample(object, draws)[["theta"]]
  t(loglik_pointwise(object, th, newdata))
}

# ---- loo, waic, loo_compare ----------------------------------------------------

#' Approximate leave-one-out cross-validation of a variational fit
#'
#' `loo(fit)` estimates the expected log pointwise predictive density
#' (elpd) for new data by Pareto-smoothed importance sampling from q, through
#' [loo::loo_approximate_posterior()]: the estimator made for approximate
#' posteriors, which corrects the draws of q towards the posterior with the
#' ratios p(theta | y) / q(theta) (log p(y, theta) - log q(theta), known up
#' to a constant) before leaving each observation out.  Its Pareto k
#' diagnostics say where the correction is unreliable.  `waic(fit)` is
#' the widely applicable information criterion from the same draws (without
#' the correction to the posterior), and `loo_compare(fit1, fit2, ...)`
#' compares fits by elpd (as [loo::loo_compare()] on their `loo()` results).
#'
#' `loo()` is a vbayes generic and the same method is registered for
#' [loo::loo()], so it works whether or not \pkg{loo} is attached; \pkg{loo}
#' must be installed.  `waic()` and `loo_compare()` are the generics of
#' \pkg{loo}.  With more than 2.5e7 log-likelihood values (draws x
#' observations; `options(vbayes.loo_matrix_max =)` changes the limit) the
#' log-likelihood is computed one observation at a time instead of held in
#' memory.
#' @param x A fit from [vb()] or [vb_fit()] (for `loo_compare()`, the first
#'   of several).
#' @param draws Number of draws from q.
#' @param cores,save_psis Passed to [loo::loo_approximate_posterior()].
#' @param criterion For `loo_compare()`: `"loo"` or `"waic"`.
#' @param ... For `loo_compare()`, further fits; otherwise unused.
#' @return `loo()`: a `psis_loo_ap` object of \pkg{loo} (printing gives
#'   `elpd_loo`, `p_loo`, `looic` and the Pareto k table); `waic()`: a
#'   `waic` object; `loo_compare()`: the matrix of [loo::loo_compare()].
#' @references Vehtari, A., Gelman, A. and Gabry, J. (2017). Practical
#'   Bayesian model evaluation using leave-one-out cross-validation and WAIC.
#'   *Statistics and Computing* 27, 1413-1432.
#'
#'   Magnusson, M., Andersen, M., Jonasson, J. and Vehtari, A. (2019).
#'   Bayesian leave-one-out cross-validation for large data. *ICML*.
#' @examples
#' if (requireNamespace("loo", quietly = TRUE)) {
#'   fit <- vb(mpg ~ wt, data = mtcars)
#'   loo(fit, draws = 1000)
#' }
#' @export
loo <- function(x, ...) UseMethod("loo")

#' @rdname loo
#' @export
loo.default <- function(x, ...) {
  need_pkg("loo", "loo()")
  eco_forward(loo::loo, x, ...)
}

#' @rdname loo
#' @export
#' @rawNamespace S3method(loo::loo, vb_posterior)
loo.vb_posterior <- function(x, draws = 4000, cores = getOption("mc.cores", 1), save_psis = FALSE, ...) {
  need_pkg("loo", "loo()")
  draws <- check_count(draws, "draws")
  n <- tryCatch(nobs(x), error = function(e) 0)
  big <- inherits(x, "vbfit") && as.double(n) * draws > getOption("vbayes.loo_matrix_max", 2.5e7)
  qs <- q_sample(x, draws)
  # the log-likelihood first: a fit without data stops here, saying why
  ll <- if (!big) t(loglik_pointwise(x, qs$theta))
  lp <- log_joint(x, qs$theta)
  lg <- qs$logq
  if (!all(is.finite(lp)) || !all(is.finite(lg)))
    stop("loo(): log p(y, theta) or log q(theta) is not finite at some draws from q; the importance ratios are undefined.",
         call. = FALSE)
  out <- if (!big) {
    loo::loo_approximate_posterior(ll, log_p = lp, log_g = lg, cores = cores, save_psis = save_psis)
  } else {
    # one observation at a time: the full matrix would not fit comfortably
    d <- eco_data(x, NULL, "loo")
    fit1 <- x
    llfun <- function(data_i, draws) {
      i <- data_i$i
      fit1$x <- d$X[i, , drop = FALSE]; fit1$offset <- d$offset[i]
      fit1$y <- d$y[i]; fit1$prior.weights <- d$w[i]
      drop(loglik_pointwise(fit1, draws))
    }
    loo::loo_approximate_posterior(llfun, data = data.frame(i = seq_len(nrow(d$X))), draws = qs$theta,
                                   log_p = lp, log_g = lg, cores = cores, save_psis = save_psis)
  }
  attr(out, "model_name") <- deparse1(substitute(x))
  out
}

#' @rdname loo
#' @exportS3Method loo::waic
waic.vb_posterior <- function(x, draws = 4000, ...) {
  need_pkg("loo", "waic()")
  loo::waic(log_lik(x, draws = draws))
}

#' @rdname loo
#' @exportS3Method loo::loo_compare
loo_compare.vb_posterior <- function(x, ..., criterion = c("loo", "waic"), draws = 4000) {
  need_pkg("loo", "loo_compare()")
  criterion <- match.arg(criterion)
  fits <- c(list(x), list(...))
  nm <- vapply(as.list(substitute(list(x, ...)))[-1L], deparse1, "")
  if (!is.null(names(fits))) nm[nzchar(names(fits))] <- names(fits)[nzchar(names(fits))]
  bad <- !vapply(fits, inherits, TRUE, "vb_posterior")
  if (any(bad))
    stop(sprintf("loo_compare(): every argument must be a vbayes fit; %s is not.", nm[bad][1L]), call. = FALSE)
  if (length(fits) < 2L) stop("loo_compare(): give at least two fits.", call. = FALSE)
  res <- lapply(fits, function(f) if (criterion == "loo") loo.vb_posterior(f, draws = draws) else
    waic.vb_posterior(f, draws = draws))
  names(res) <- make.unique(nm)
  loo::loo_compare(res)
}

# Call another package's generic from a default method of ours.  Called from
# here, UseMethod() would look for methods in this namespace first and find
# our own default again; evaluated in the global environment it finds the
# methods registered for the other package's generic.
eco_forward <- function(generic, x, ...) do.call(generic, list(x, ...), envir = globalenv())

need_pkg <- function(pkg, what) {
  if (!requireNamespace(pkg, quietly = TRUE))
    stop(sprintf("%s needs the %s package; install it with install.packages(\"%s\").", what, pkg, pkg),
         call. = FALSE)
}

# ---- posterior: as_draws ---------------------------------------------------------

#' Draws from q in the formats of the posterior package
#'
#' `as_draws_df()`, `as_draws_matrix()`, `as_draws_array()`,
#' `as_draws_list()` and `as_draws_rvars()` (the generics of \pkg{posterior})
#' convert `draws` independent draws from q of any vbayes posterior into
#' that format, as one chain; `as_draws()` gives a `draws_df`.  The values
#' are those of [draws()] (for gaussian GLMs the noise sd is the variable
#' `sigma`); latent paths of [vb_lds()] fits are named `z[trial,t,j]`.
#' `as_draws()` is a vbayes generic and is registered for
#' [posterior::as_draws()] too.
#' @param x Any vbayes posterior.
#' @param draws Number of draws.
#' @param ... Unused.
#' @return A draws object of \pkg{posterior}.
#' @examples
#' if (requireNamespace("posterior", quietly = TRUE)) {
#'   fit <- vb(mpg ~ wt, data = mtcars)
#'   posterior::summarise_draws(as_draws(fit, draws = 200))
#' }
#' @export
as_draws <- function(x, ...) UseMethod("as_draws")

#' @rdname as_draws
#' @export
as_draws.default <- function(x, ...) {
  need_pkg("posterior", "as_draws()")
  eco_forward(posterior::as_draws, x, ...)
}

#' @rdname as_draws
#' @export
#' @rawNamespace S3method(posterior::as_draws, vb_posterior)
as_draws.vb_posterior <- function(x, draws = 4000, ...) as_draws_df.vb_posterior(x, draws = draws)

#' @rdname as_draws
#' @exportS3Method posterior::as_draws_matrix
as_draws_matrix.vb_posterior <- function(x, draws = 4000, ...) {
  need_pkg("posterior", "as_draws_matrix()")
  posterior::as_draws_matrix(eco_draws(x, draws))
}

#' @rdname as_draws
#' @exportS3Method posterior::as_draws_df
as_draws_df.vb_posterior <- function(x, draws = 4000, ...) {
  need_pkg("posterior", "as_draws_df()")
  posterior::as_draws_df(as_draws_matrix.vb_posterior(x, draws))
}

#' @rdname as_draws
#' @exportS3Method posterior::as_draws_array
as_draws_array.vb_posterior <- function(x, draws = 4000, ...) {
  need_pkg("posterior", "as_draws_array()")
  posterior::as_draws_array(as_draws_matrix.vb_posterior(x, draws))
}

#' @rdname as_draws
#' @exportS3Method posterior::as_draws_list
as_draws_list.vb_posterior <- function(x, draws = 4000, ...) {
  need_pkg("posterior", "as_draws_list()")
  posterior::as_draws_list(as_draws_matrix.vb_posterior(x, draws))
}

#' @rdname as_draws
#' @exportS3Method posterior::as_draws_rvars
as_draws_rvars.vb_posterior <- function(x, draws = 4000, ...) {
  need_pkg("posterior", "as_draws_rvars()")
  posterior::as_draws_rvars(as_draws_matrix.vb_posterior(x, draws))
}

# draws() with names every variable can carry: latent paths of vb_lds() fits
# as z[trial,t,j], anything else unnamed as theta[i].
eco_draws <- function(x, n) {
  n <- check_count(n, "draws")
  dr <- draws(x, n)
  if (is.null(colnames(dr))) {
    colnames(dr) <- if (inherits(x, "vblds")) {
      k <- x$latent_dim
      unlist(lapply(seq_along(x$posterior), function(r) {
        T <- nrow(x$posterior[[r]]$mean)
        sprintf("z[%d,%d,%d]", r, rep(seq_len(T), each = k), rep(seq_len(k), T))
      }))
    } else sprintf("theta[%d]", seq_len(ncol(dr)))
  }
  dr
}

# ---- rstantools: posterior_linpred / epred / predict, bayes_R2 --------------------

#' Posterior draws of the linear predictor, the mean and new responses
#'
#' The methods of the \pkg{rstantools} generics for GLM fits, with the
#' arguments of \pkg{rstanarm}: each returns a `draws` x n matrix from
#' `draws` independent draws of q.  `posterior_linpred()` gives the linear
#' predictor (offset and log exposure included; `transform = TRUE` applies
#' the inverse link), `posterior_epred()` the mean response (poisson:
#' expected counts, binomial: the probability), `posterior_predict()` new
#' responses (binomial: successes out of the fitted trials, or out of one
#' trial for `newdata`).  `bayes_R2()` is the Bayesian R^2 of Gelman,
#' Goodrich, Gabry and Vehtari (2019), computed as \pkg{rstanarm} does:
#' for each draw, var(mu) / (var(mu) + sigma2) over the observations, with
#' sigma2 the noise variance (gaussian) or the mean model variance of the
#' data given mu: mu (1 - mu) for binomial (on the count scale, trials
#' times that, when there are several trials), and mu for poisson (an
#' extension: \pkg{rstanarm} has no poisson R^2).
#' @param object A fit from [vb()] or [vb_fit()].
#' @param transform Apply the inverse link?
#' @param newdata Optional data frame of predictors (for `bayes_R2()` not
#'   used).
#' @param draws Number of draws from q.
#' @param seed Optional seed for [set.seed()].
#' @param ... Unused.
#' @return A `draws` x n matrix (`bayes_R2()`: a vector of `draws` values).
#' @references Gelman, A., Goodrich, B., Gabry, J. and Vehtari, A. (2019).
#'   R-squared for Bayesian regression models. *The American Statistician*
#'   73, 307-309.
#' @examples
#' if (requireNamespace("rstantools", quietly = TRUE)) {
#'   fit <- vb(mpg ~ wt + hp, data = mtcars)
#'   dim(rstantools::posterior_predict(fit, draws = 100))
#'   summary(rstantools::bayes_R2(fit, draws = 500))
#' }
#' @name posterior_predict.vbfit
NULL

# theta draws and the linear predictor (n x S) at the fitted or new data
eco_linpred <- function(object, newdata, draws, what) {
  draws <- check_count(draws, "draws")
  if (!is.null(newdata) && !is.data.frame(newdata))
    stop(sprintf("%s(): 'newdata' must be a data frame.", what), call. = FALSE)
  d <- new_design(object, newdata, what)
  th <- q_sample(object, draws)[["theta"]]
  p <- ncol(d$X)
  list(eta = d$X %*% th[seq_len(p), , drop = FALSE] + d$offset, theta = th, d = d, p = p)
}

#' @rdname posterior_predict.vbfit
#' @exportS3Method rstantools::posterior_linpred
posterior_linpred.vbfit <- function(object, transform = FALSE, newdata = NULL, draws = 4000, ...) {
  if (!is.logical(transform) || length(transform) != 1L || is.na(transform))
    stop("posterior_linpred(): 'transform' must be TRUE or FALSE.", call. = FALSE)
  e <- eco_linpred(object, newdata, draws, "posterior_linpred")$eta
  out <- t(if (transform) object[["family"]]$linkinv(e) else e)
  colnames(out) <- rownames(e)
  out
}

#' @rdname posterior_predict.vbfit
#' @exportS3Method rstantools::posterior_epred
posterior_epred.vbfit <- function(object, newdata = NULL, draws = 4000, ...) {
  e <- eco_linpred(object, newdata, draws, "posterior_epred")$eta
  out <- t(object[["family"]]$linkinv(e))
  colnames(out) <- rownames(e)
  out
}

#' @rdname posterior_predict.vbfit
#' @exportS3Method rstantools::posterior_predict
posterior_predict.vbfit <- function(object, newdata = NULL, draws = 4000, seed = NULL, ...) {
  if (!is.null(seed)) set.seed(seed)
  draws <- check_count(draws, "draws")
  if (!is.null(newdata) && !is.data.frame(newdata))
    stop("posterior_predict(): 'newdata' must be a data frame.", call. = FALSE)
  d <- new_design(object, newdata, "posterior_predict")
  out <- t(predictive_draws(object, d, draws))
  colnames(out) <- rownames(d$X)
  out
}

#' @rdname posterior_predict.vbfit
#' @exportS3Method rstantools::bayes_R2
bayes_R2.vbfit <- function(object, draws = 4000, ...) {
  l <- eco_linpred(object, NULL, draws, "bayes_R2")
  w <- object[["prior.weights"]]
  keep <- w > 0
  mu <- t(object[["family"]]$linkinv(l$eta[keep, , drop = FALSE]))
  sigma2 <- switch(object[["family"]]$family,
    gaussian = exp(-l$theta[l$p + 1L, ]),
    poisson = rowMeans(mu),
    binomial = {
      if (any(w[keep] != 1)) {
        m <- sweep(mu, 2L, w[keep], `*`)
        s2 <- rowMeans(m * (1 - mu))
        mu <- m
        s2
      } else rowMeans(mu * (1 - mu))
    })
  v <- apply(mu, 1L, stats::var)
  v / (v + sigma2)
}

# ---- bayesplot: pp_check -----------------------------------------------------------

#' Posterior predictive checks with bayesplot
#'
#' `pp_check(fit)` draws responses from the posterior predictive
#' distribution ([posterior_predict.vbfit()]) and hands them, with the
#' observed response, to one of \pkg{bayesplot}'s `ppc_*()` functions, as
#' \pkg{rstanarm} does.  Binomial responses with several trials are compared
#' as proportions.  Arguments `x` and `group` of the plotting function may
#' name a variable of the model frame (or be a vector).
#' @param object A fit from [vb()].
#' @param plotfun A \pkg{bayesplot} PPC function or its name, with or
#'   without the `ppc_` prefix (see [bayesplot::available_ppc()]).
#' @param nreps Number of replicated data sets; by default as in
#'   \pkg{rstanarm} (50 for overlays, 8 for histograms and densities, 3 for
#'   scatter and error plots, 1000 for statistics and intervals).
#' @param seed Optional seed for [set.seed()].
#' @param ... Passed to the plotting function.
#' @return A ggplot object.
#' @examples
#' if (requireNamespace("bayesplot", quietly = TRUE)) {
#'   fit <- vb(mpg ~ wt + hp, data = mtcars)
#'   bayesplot::pp_check(fit, nreps = 20)
#' }
#' @exportS3Method bayesplot::pp_check
pp_check.vbfit <- function(object, plotfun = "dens_overlay", nreps = NULL, seed = NULL, ...) {
  need_pkg("bayesplot", "pp_check()")
  if (is.function(plotfun)) {
    fun <- plotfun
    fname <- deparse1(substitute(plotfun))
  } else {
    if (!is.character(plotfun) || length(plotfun) != 1L || is.na(plotfun))
      stop("pp_check(): 'plotfun' must be the name of a bayesplot PPC function, such as \"dens_overlay\".", call. = FALSE)
    fname <- if (startsWith(plotfun, "ppc_")) plotfun else paste0("ppc_", plotfun)
    fun <- get0(fname, envir = asNamespace("bayesplot"), mode = "function", inherits = FALSE)
    if (is.null(fun))
      stop(sprintf("pp_check(): bayesplot has no PPC function '%s'; see bayesplot::available_ppc().", fname),
           call. = FALSE)
  }
  if (!is.null(nreps)) nreps <- check_count(nreps, "nreps")
  else {
    short <- sub("^ppc_", "", fname)
    nreps <- if (grepl("overlay", short)) 50L else
      if (grepl("^(hist|dens|boxplot|freqpoly|violin)", short)) 8L else
        if (grepl("^(error|scatter)", short) && !grepl("avg", short)) 3L else 1000L
  }
  if (!is.null(seed)) set.seed(seed)
  if (is.null(object[["y"]]))
    stop("pp_check(): this fit was made with y = FALSE, so its response is gone; refit with y = TRUE.", call. = FALSE)
  d <- new_design(object, NULL, "pp_check")
  w <- object[["prior.weights"]]
  keep <- w > 0
  yrep <- t(predictive_draws(object, d, nreps))[, keep, drop = FALSE]
  y <- object[["y"]][keep]
  if (object[["family"]]$family == "binomial" && any(w[keep] != 1)) {
    y <- y / w[keep]
    yrep <- sweep(yrep, 2L, w[keep], `/`)
  }
  args <- list(...)
  for (a in intersect(c("x", "group"), names(args))) {
    v <- args[[a]]
    if (is.character(v) && length(v) == 1L) {
      mf <- object[["model"]]
      if (is.null(mf) || !v %in% names(mf))
        stop(sprintf("pp_check(): '%s' = \"%s\" is not a variable of the model frame.", a, v), call. = FALSE)
      v <- mf[[v]]
    }
    if (length(v) == length(keep)) v <- v[keep]
    args[[a]] <- v
  }
  do.call(fun, c(list(y = as.numeric(y), yrep = yrep), args))
}

# ---- emmeans ----------------------------------------------------------------------

#' Estimated marginal means from a variational fit
#'
#' Methods that let \pkg{emmeans} build reference grids, marginal means and
#' contrasts from a [vb()] fit.  The grid's linear functions L beta are
#' Gaussian under q, with mean L mu and covariance L Sigma L', so the
#' intervals \pkg{emmeans} reports (with `df = Inf`) are the exact
#' equal-tailed credible intervals of q, and `type = "response"` maps them
#' through the inverse link.  (\pkg{emmeans} labels them "confidence
#' intervals".)
#' @param object A fit from [vb()].
#' @param trms,xlev,grid As in the \pkg{emmeans} extension interface.
#' @param ... Passed on by \pkg{emmeans}.
#' @return `recover_data()`: the data frame \pkg{emmeans} needs;
#'   `emm_basis()`: the list of `X`, `bhat`, `nbasis`, `V`, `dffun`,
#'   `dfargs`, `misc`.
#' @examples
#' if (requireNamespace("emmeans", quietly = TRUE)) {
#'   d <- transform(mtcars, cyl = factor(cyl))
#'   fit <- vb(mpg ~ cyl + wt, data = d)
#'   emmeans::emmeans(fit, "cyl")
#' }
#' @name emmeans-vbfit
NULL

#' @rdname emmeans-vbfit
#' @exportS3Method emmeans::recover_data
recover_data.vbfit <- function(object, ...) {
  if (is.null(object[["call"]]) || is.null(object[["terms"]]))
    stop("emmeans needs a fit made from a formula by vb(); this one came from vb_fit().", call. = FALSE)
  emmeans::recover_data(object[["call"]], delete.response(object[["terms"]]), object[["na.action"]],
                        frame = object[["model"]], ...)
}

#' @rdname emmeans-vbfit
#' @exportS3Method emmeans::emm_basis
emm_basis.vbfit <- function(object, trms, xlev, grid, ...) {
  m <- model.frame(trms, grid, na.action = stats::na.pass, xlev = xlev)
  X <- model.matrix(trms, m, contrasts.arg = object[["contrasts"]])
  bhat <- coef(object)
  if (!identical(colnames(X), names(bhat)))
    stop("emmeans: the reference grid's model matrix does not match the fit's coefficients.", call. = FALSE)
  # every linear function is identified: the proper prior makes q proper
  list(X = X, bhat = bhat, nbasis = matrix(NA), V = vcov(object),
       dffun = function(k, dfargs) Inf, dfargs = list(),
       misc = emmeans::.std.link.labels(object[["family"]], list()))
}
