#' Data beyond memory: a chunked data source for `vb()`
#'
#' `vb(formula, data = vb_chunks(source), ...)` fits a GLM to data read one
#' chunk at a time, so memory is bounded by the chunk size, not by the number
#' of rows. Each iteration of the engine is one pass over the chunks that
#' accumulates the ELBO, its gradient in the posterior mean and the curvature
#' X'WX, so the optimum is that of the in-memory fit of the same rows
#' (gaussian in one pass over the data: its sufficient statistics are X'WX,
#' X'Wy and y'Wy; Poisson and binomial in a few).
#'
#' Sources:
#' * a function `source(reset)` in the `biglm::bigglm()` convention: called with
#'   `reset = TRUE` it rewinds to the first chunk; with `reset = FALSE` it
#'   returns the next chunk as a data frame, or `NULL` after the last;
#' * a DBI connection with a `query`: rows are fetched `chunk_size` at a time
#'   (any DBI backend; tested with RSQLite). With `connect`, a function that
#'   opens a new connection to the same database, the chunks are read in
#'   parallel instead: chunk k is `SELECT * FROM (query) LIMIT chunk_size
#'   OFFSET (k - 1) chunk_size`, each read by a worker on its own connection
#'   (a connection cannot travel to another process). Give the query a
#'   deterministic row order (`ORDER BY` a key) so that the chunks partition
#'   the rows;
#' * a character vector of file names, each file one chunk read by `reader`.
#'   File chunks are processed in parallel through \pkg{future.apply} on the
#'   user's `plan()`: each worker reads its own files and only p x p statistics
#'   travel back.
#'
#' The fit records `passes`, the number of passes it made over the data.
#' Factor levels are collected in a first pass over all chunks, so a level
#' that appears only in a late chunk is handled; `na.action` applies chunk by
#' chunk; empty chunks are skipped. The fit keeps no data: `predict()` with
#' `newdata` (for instance a chunk) works; `fitted()` and `residuals()` do
#' not. Supported: `approx = "fullrank"`, `"block"` and `"meanfield"`,
#' `method = "cavi"`, [normal()] and [laplace()] priors, given explicitly
#' (the autoscaled defaults of [priors] would need the data's scales).
#'
#' @param source A function `(reset)`, a DBI connection, or file names.
#' @param query With a DBI connection: the SQL query giving the rows.
#' @param chunk_size With a DBI connection: rows per fetch.
#' @param connect With a DBI connection: `NULL` (read the chunks in turn on
#'   `source`), or a function of no arguments returning a new connection to
#'   the same database, for reading the chunks in parallel on the user's
#'   `plan()`, e.g. `function() DBI::dbConnect(RSQLite::SQLite(), path)`.
#' @param reader With files: the function reading one file into a data
#'   frame (`utils::read.csv` by default).
#' @param ... Further arguments of `reader`.
#' @return An object of class `vb_chunks` for the `data` argument of [vb()].
#' @examples
#' set.seed(1)
#' d <- data.frame(x = rnorm(3000))
#' d$y <- rpois(3000, exp(0.5 + 0.3 * d$x))
#' pieces <- split(d, rep(1:3, each = 1000))
#' i <- 0
#' src <- function(reset) {
#'   if (reset) { i <<- 0; return(NULL) }
#'   i <<- i + 1
#'   if (i > length(pieces)) NULL else pieces[[i]]
#' }
#' pr <- normal(0, 2.5); pri <- normal(0, 10)
#' fit <- vb(y ~ x, data = vb_chunks(src), family = poisson(), prior = pr, prior_intercept = pri)
#' coef(fit)
#' coef(vb(y ~ x, data = d, family = poisson(), prior = pr, prior_intercept = pri))
#' @export
vb_chunks <- function(source, query = NULL, chunk_size = 100000L, reader = utils::read.csv, ..., connect = NULL) {
  if (is.function(source)) {
    return(structure(list(type = "function", source = source), class = "vb_chunks"))
  }
  if (is.character(source)) {
    if (!length(source) || anyNA(source)) stop("vb_chunks(): give at least one file name.", call. = FALSE)
    miss <- !file.exists(source)
    if (any(miss)) stop(sprintf("vb_chunks(): file(s) not found: %s.", many_list(source[miss])), call. = FALSE)
    if (!is.function(reader)) stop("vb_chunks(): 'reader' must be a function reading one file.", call. = FALSE)
    return(structure(list(type = "files", files = source, reader = reader, args = list(...)), class = "vb_chunks"))
  }
  if (isS4(source) && inherits(source, "DBIConnection")) {
    if (!requireNamespace("DBI", quietly = TRUE))
      stop("vb_chunks(): reading from a database needs the DBI package: install.packages(\"DBI\").", call. = FALSE)
    if (!is.character(query) || length(query) != 1L || is.na(query))
      stop("vb_chunks(): with a database connection, give the SQL 'query' that returns the rows.", call. = FALSE)
    chunk_size <- check_count(chunk_size, "chunk_size")
    if (!is.null(connect) && !is.function(connect))
      stop("vb_chunks(): 'connect' must be NULL or a function of no arguments that opens a new connection to the same database.",
           call. = FALSE)
    if (!is.null(connect)) connect <- travelling(connect) # its globals (a path, say) go with it to the workers
    return(structure(list(type = "dbi", con = source, query = query, chunk_size = chunk_size, connect = connect),
                     class = "vb_chunks"))
  }
  stop("vb_chunks(): 'source' must be a function(reset), a DBI connection with a query, or file names.",
       call. = FALSE)
}

#' @export
print.vb_chunks <- function(x, ...) {
  cat(switch(x$type, "function" = "chunked data from a function(reset)",
             files = sprintf("chunked data from %d file(s)", length(x$files)),
             dbi = sprintf("chunked data from a database query, %d rows a chunk%s", x$chunk_size,
                           if (is.null(x$connect)) "" else ", read in parallel")), "\n")
  invisible(x)
}

# Visit every chunk: f(chunk) for each non-empty data frame, results in a list.
# Files, and database chunks with a connect() function, go through
# future.apply (each worker reads its own); the others in turn.
chunk_map <- function(src, f) {
  check_chunk <- function(ch, k) {
    if (!is.data.frame(ch)) stop(sprintf("vb(): chunk %d of the data source is not a data frame (a %s).", k,
                                         class(ch)[1L]), call. = FALSE)
    ch
  }
  switch(src$type,
    files = future.apply::future_lapply(seq_along(src$files), function(k) {
      ch <- check_chunk(do.call(src$reader, c(list(src$files[k]), src$args)), k)
      if (nrow(ch)) f(ch) else NULL
    }, future.seed = TRUE),
    "function" = {
      src$source(reset = TRUE)
      out <- list(); k <- 0L
      repeat {
        ch <- src$source(reset = FALSE)
        if (is.null(ch)) break
        k <- k + 1L
        ch <- check_chunk(ch, k)
        if (nrow(ch)) out[[length(out) + 1L]] <- f(ch)
      }
      out
    },
    dbi = if (!is.null(src$connect)) {
      nrows <- DBI::dbGetQuery(src$con, sprintf("SELECT COUNT(*) AS n FROM (%s)", src$query))$n
      K <- ceiling(nrows / src$chunk_size)
      if (!K) return(list())
      future.apply::future_lapply(seq_len(K), function(k) {
        con <- src$connect()
        on.exit(DBI::dbDisconnect(con))
        ch <- check_chunk(DBI::dbGetQuery(con, sprintf("SELECT * FROM (%s) LIMIT %d OFFSET %.0f", src$query,
                                                       src$chunk_size, (k - 1) * src$chunk_size)), k)
        if (nrow(ch)) f(ch) else NULL
      }, future.seed = TRUE, future.packages = "vbayes")
    } else {
      res <- DBI::dbSendQuery(src$con, src$query)
      on.exit(DBI::dbClearResult(res))
      out <- list()
      repeat {
        ch <- DBI::dbFetch(res, n = src$chunk_size)
        if (nrow(ch)) out[[length(out) + 1L]] <- f(ch)
        if (DBI::dbHasCompleted(res)) break
      }
      out
    })
}


# The pieces of vb()'s model frame call that name columns, applied to a chunk.
chunk_frame <- function(spec, chunk) {
  mfc <- spec$mf_call
  mfc$data <- chunk
  mfc$xlev <- spec$xlev
  mfc$drop.unused.levels <- FALSE
  mf <- eval(mfc, spec$env)
  if (!nrow(mf)) return(NULL)
  mt <- attr(mf, "terms")
  X <- model.matrix(mt, mf, spec$contrasts)
  n <- nrow(X)
  if (!identical(colnames(X), spec$cn))
    stop("vb(): the chunks do not give the same design columns; check that every chunk has the same variables.",
         call. = FALSE)
  ex <- frame_extras(mf, spec$family, n, spec$expo_scalar)
  resp <- family_response(model.response(mf, "any"), ex$w, spec$family, n)
  d <- check_glm_data(X, resp$y, spec$family, resp$weights, ex$off, ex$expo)
  list(X = d$X, y = d$y, weights = d$weights, offset = d$offset)
}

# The first pass: the terms, every factor's levels (as vb() would give them
# for all rows together: a factor's own level order, characters sorted; levels
# that no row uses dropped), the columns, the row count.
chunk_scan <- function(spec, src) {
  seen <- chunk_map(src, function(ch) {
    mfc <- spec$mf_call
    mfc$data <- ch
    mfc$drop.unused.levels <- FALSE
    mf <- eval(mfc, spec$env)
    fac <- names(mf)[vapply(mf, function(v) is.factor(v) || is.character(v), logical(1))]
    lev <- lapply(mf[fac], function(v) list(levels = if (is.factor(v)) levels(v), factor = is.factor(v),
                                             used = unique(as.character(v[!is.na(v)]))))
    list(levels = lev, n = nrow(mf))
  })
  seen <- Filter(function(s) s$n > 0L, seen)
  if (!length(seen)) stop("vb(): the data source gave no rows (after subset and na.action).", call. = FALSE)
  nms <- unique(unlist(lapply(seen, function(s) names(s$levels))))
  xlev <- lapply(stats::setNames(nm = nms), function(v) {
    parts <- lapply(seen, function(s) s$levels[[v]])
    parts <- parts[!vapply(parts, is.null, logical(1))]
    used <- unique(unlist(lapply(parts, `[[`, "used")))
    if (all(vapply(parts, `[[`, logical(1), "factor"))) {
      all <- unique(unlist(lapply(parts, `[[`, "levels")))
      all[all %in% used]
    } else sort(used)
  })
  list(xlev = xlev, n = sum(vapply(seen, `[[`, integer(1), "n")))
}

# vb() with data = vb_chunks(): the model frame call of vb() applied chunk by
# chunk (column arguments such as weights = w are evaluated in each chunk).
vb_chunked <- function(cl, formula, src, family, prior, prior_intercept, prior_precision, approx, method,
                       control, contrasts, env) {
  if (method != "cavi") stop("vb(): chunked data are fitted by coordinate ascent: use method = \"cavi\".", call. = FALSE)
  # the autoscaled defaults need the data's moments and centring (?priors);
  # a streamed fit takes its priors as given
  left <- c(prior = is.null(prior), prior_intercept = is.null(prior_intercept),
            prior_precision = is.null(prior_precision) && family$family == "gaussian")
  if (any(left))
    stop(sprintf("vb(): with data = vb_chunks(), give the priors explicitly (%s): the autoscaled defaults would need a pass over the data for its scales; e.g. prior = normal(0, 2.5), prior_intercept = normal(0, 10)%s.",
                 paste(names(left)[left], collapse = ", "),
                 if (family$family == "gaussian") ", prior_precision = gamma_prior(1, 1)" else ""), call. = FALSE)
  if (is.null(prior_precision)) prior_precision <- gamma_prior(1, 1) # unused outside gaussian
  prior <- as_vb_prior(prior, "prior")
  prior_intercept <- as_vb_prior(prior_intercept, "prior_intercept")
  prior_precision <- as_vb_prior(prior_precision, "prior_precision", "gamma")
  mf <- cl
  m <- match(c("formula", "subset", "weights", "na.action", "offset", "exposure"), names(mf), 0L)
  mf <- mf[c(1L, m)]
  mf[[1L]] <- quote(stats::model.frame)
  expo_scalar <- NULL
  if (!is.null(mf$exposure)) {
    ev <- tryCatch(eval(mf$exposure, env), error = function(e) NULL)
    if (is.numeric(ev) && length(ev) == 1L) {
      expo_scalar <- ev
      mf$exposure <- NULL
    }
  }
  if (!is.null(expo_scalar) && family$family != "poisson")
    stop("vb(): 'exposure' is for poisson() models (bin width or exposure time); use 'offset' otherwise.", call. = FALSE)
  # the call, formula and the objects they name travel to future workers
  # (file chunks, or database chunks with connect()) in an environment of
  # their own; evaluated here they are the same objects
  trav <- travelling(formula, all.names(mf))
  mf$formula <- trav
  env <- environment(trav)
  spec <- list(mf_call = mf, env = env, formula = formula, family = family, contrasts = contrasts,
               expo_scalar = expo_scalar)
  fit <- vb_stream(spec, src, prior, prior_intercept, prior_precision, approx, control)
  fit$call <- cl
  fit$formula <- stats::formula(fit$terms)
  fit
}

# ---- the streaming engine ------------------------------------------------------
# q(beta) = N(mu, Sigma) (Sigma dense, block-diagonal or diagonal) and, for
# gaussian, q(tau) = Gamma(A, B).  The ELBO is sum_k E log p(y_k | beta) over
# chunks plus the data-free part (prior, entropy, q(tau) terms), which the C
# ELBO routine gives for a model with one zero-weight row.  An iteration is
# the non-conjugate VMP step of the in-memory engine: target precision
# Lambda = -2 d(E log p + E log prior)/dSigma, mean step Lambda^-1 dELBO/dmu
# (Newton for meanfield and block, so their means solve the same stationarity
# conditions as the in-memory coordinate sweeps), halved until the ELBO does
# not decrease.  Gaussian: one pass for X'WX, X'Wy, y'Wy, then all in memory.
vb_stream <- function(spec, src, prior, prior_intercept, prior_precision, approx, control) {
  t0 <- proc.time()[["elapsed"]]
  family <- spec$family
  scan <- chunk_scan(spec, src)
  passes <- 1L # over all chunks: the scan, then one per ELBO evaluation
  spec$xlev <- scan$xlev
  first <- chunk_map_first(src)
  mfc <- spec$mf_call
  mfc$data <- first
  mfc$xlev <- spec$xlev
  mfc$drop.unused.levels <- FALSE
  mf1 <- eval(mfc, spec$env)
  mt <- attr(mf1, "terms")
  X1 <- model.matrix(mt, mf1, spec$contrasts)
  spec$cn <- colnames(X1)
  cn <- spec$cn; p <- length(cn)
  pa <- prior_arrays(cn, prior, prior_intercept)
  dummy <- glm_model(matrix(0, 1L, p, dimnames = list(NULL, cn)), 0, 0, 0, family, pa, prior_precision, control)
  blocks <- make_blocks(approx, cn, attr(X1, "assign"), control$blocks)
  gauss <- family$family == "gaussian"

  # data part at q: loglik, gradient in mu, -2 x gradient in Sigma (curvature)
  if (gauss) {
    passes <- passes + 1L
    st <- Reduce(function(a, b) Map(`+`, a, b), chunk_map(src, function(ch) {
      d <- chunk_frame(spec, ch)
      if (is.null(d)) return(NULL)
      w <- d$weights; pos <- w > 0
      yo <- d$y - d$offset
      list(XtWX = crossprod(d$X * sqrt(w)), XtWy = crossprod(d$X, w * yo), yWy = sum(w * yo^2),
           npos = sum(pos), lw = sum(0.5 * (log(w[pos]) - log(2 * pi))), n = sum(pos))
    }))
    data_part <- function(mu, Sigma, tau) {
      Et <- tau[1] / tau[2]; Elt <- digamma(tau[1]) - log(tau[2])
      S <- st$yWy - 2 * sum(mu * st$XtWy) + sum(mu * (st$XtWX %*% mu)) + sum(st$XtWX * Sigma)
      list(ll = st$lw + 0.5 * st$npos * Elt - 0.5 * Et * S, g = Et * drop(st$XtWy - st$XtWX %*% mu),
           H = Et * st$XtWX, S = S)
    }
    nobs <- st$n
  } else {
    data_part <- function(mu, Sigma, tau) {
      passes <<- passes + 1L
      parts <- chunk_map(src, function(ch) {
        d <- chunk_frame(spec, ch)
        if (is.null(d)) return(NULL)
        m <- glm_model(d$X, d$y, d$weights, d$offset, family, pa, prior_precision, control)
        e <- .Call(C_glm_elbo, m, mu, Sigma, c(1, 1))
        list(ll = e$loglik, g = e$grad_mu, G = e$grad_Sigma, k = 1L)
      })
      parts <- Filter(Negate(is.null), parts)
      tot <- Reduce(function(a, b) Map(`+`, a, b), parts)
      z <- .Call(C_glm_elbo, dummy, mu, Sigma, c(1, 1))
      # each chunk's gradients hold the data-free part once: remove all copies
      list(ll = tot$ll, g = tot$g - tot$k * z$grad_mu, H = -2 * (tot$G - tot$k * z$grad_Sigma))
    }
    nobs <- scan$n
  }
  nondata <- function(mu, Sigma, tau) .Call(C_glm_elbo, dummy, mu, Sigma, tau)
  restrict <- function(M) if (approx == "fullrank") M else M * outer(blocks, blocks, "==")
  elbo_at <- function(mu, Sigma, tau) {
    z <- nondata(mu, Sigma, tau)
    dp <- data_part(mu, Sigma, tau)
    list(elbo = dp$ll + z$elbo, ll = dp$ll, kl = -z$elbo, dp = dp, z = z)
  }
  tau_update <- function(mu, Sigma) {
    S <- data_part(mu, Sigma, c(1, 1))$S
    c(prior_precision$shape + st$npos / 2, prior_precision$rate + S / 2)
  }

  # start: prior locations, variances small enough that E exp(x'beta) is finite
  mu <- pa$location
  Sigma <- diag(pmin(pa$scale^2, 1 / nobs), p)
  tau <- if (gauss) tau_update(mu, Sigma) else c(1, 1)
  cur <- elbo_at(mu, Sigma, tau)
  trace <- cur$elbo
  status <- 1L; it <- 0L
  for (it in seq_len(control$maxit)) {
    # target: precision from the curvature of the data and prior parts
    Gprior <- cur$z$grad_Sigma - 0.5 * chol2inv(chol(Sigma)) # prior part of d/dSigma
    Lam <- restrict(cur$dp$H - 2 * Gprior)
    Lfull <- cur$dp$H - 2 * Gprior
    g <- cur$dp$g + cur$z$grad_mu
    Rl <- tryCatch(chol(Lam), error = function(e) NULL)
    Rf <- tryCatch(chol(Lfull), error = function(e) NULL)
    if (is.null(Rl) || is.null(Rf)) { status <- 3L; break }
    dmu <- drop(backsolve(Rf, forwardsolve(t(Rf), g)))
    P0 <- chol2inv(chol(Sigma))
    a <- 1; accepted <- FALSE
    for (h in 0:40) {
      Pa <- (1 - a) * P0 + a * Lam
      Sa <- tryCatch(chol2inv(chol(Pa)), error = function(e) NULL)
      if (!is.null(Sa)) {
        mua <- mu + a * dmu
        taua <- if (gauss) tau_update(mua, Sa) else tau
        new <- elbo_at(mua, Sa, taua)
        if (is.finite(new$elbo) && new$elbo >= cur$elbo - 1e-13 * abs(cur$elbo)) { accepted <- TRUE; break }
      }
      a <- a / 2
    }
    if (!accepted) { status <- 2L; break }
    old <- cur$elbo
    mu <- mua; Sigma <- Sa; tau <- taua; cur <- new
    trace <- c(trace, cur$elbo)
    if (a == 1 && tol_met(old, cur$elbo, control$tol) && sum(g * dmu) <= control$tol * (1 + abs(cur$elbo))) {
      status <- 0L
      break
    }
  }
  if (!is.finite(cur$elbo)) status <- 4L
  converged <- check_status(status, "vb() (chunked data)", it, control$tol, "maxit")
  dimnames(Sigma) <- list(cn, cn)
  fit <- list(coefficients = stats::setNames(mu, cn), vcov = Sigma, elbo = cur$elbo, elbo_trace = trace,
              elbo_terms = c(elbo = cur$elbo, loglik = cur$ll, kl = cur$kl),
              converged = converged, status = status, iterations = it,
              tau = if (gauss) stats::setNames(tau, c("shape", "rate")),
              family = family, nobs = nobs, approx = approx, method = "cavi", blocks = blocks,
              prior = list(coef = pa, precision = prior_precision), control = control,
              rank = qr(cur$dp$H)$rank, separated = FALSE, terms = mt, xlevels = spec$xlev,
              contrasts = attr(X1, "contrasts"), chunked = TRUE, passes = passes)
  fit$time <- proc.time()[["elapsed"]] - t0
  class(fit) <- c("vbstream", "vbfit", "vb_posterior")
  fit
}

# The first non-empty chunk (for the design's columns).
chunk_map_first <- function(src) {
  switch(src$type,
    files = do.call(src$reader, c(list(src$files[1L]), src$args)),
    "function" = { src$source(reset = TRUE); repeat { ch <- src$source(reset = FALSE); if (is.null(ch) || NROW(ch)) break }; ch },
    dbi = DBI::dbGetQuery(src$con, src$query, n = 1L))
}

#' @export
nobs.vbstream <- function(object, ...) object$nobs

#' @export
fitted.vbstream <- function(object, ...) stream_no_data("fitted")

#' @export
residuals.vbstream <- function(object, ...) stream_no_data("residuals")

stream_no_data <- function(what)
  stop(sprintf("%s(): a fit to chunked data keeps no data; use predict(fit, newdata = <a chunk>) instead.", what),
       call. = FALSE)
